"""Chat: the default page. The assistant is not connected yet; this page says so instead of faking answers."""

import streamlit as st

from engine.access import current_user_is_admin
from engine.knowledge_views import knowledge_stats

if "settings" not in st.session_state:  # opened by URL before the entry point ran: Streamlit's pages/ fallback
    st.session_state["requested_page"] = "pages/chat.py"
    st.switch_page("streamlit_app.py")
settings = st.session_state["settings"]

st.title("Which model should I deploy?")
st.markdown(
    "Ask about a deployment decision — *which fraud model should go to production?* — and the assistant will "
    "answer from live MLflow metrics and the team's knowledge base (acceptance criteria, guidelines, past "
    "decisions), citing every claim with a link to its source."
)
st.info("The assistant is not connected yet: answering questions arrives in a later release.", icon=":material/construction:")

stats = knowledge_stats(settings)
st.caption(f"Knowledge base: {stats['documents']} documents, {stats['chunks']} chunks, {stats['sources']} sources.")
if current_user_is_admin():
    st.page_link("pages/knowledge.py", label="Manage the knowledge base", icon=":material/library_books:")

st.chat_input("The assistant is not connected yet", disabled=True)
