"""Chat: ask which model to deploy; the answer streams in, is verified, then shown with links and evidence."""

import time

import streamlit as st

from engine.access import current_user_is_admin
from engine.answers import feedback_for, load_answer, save_feedback
from engine.assistant import QuestionError, draft_stream, finish_answer, prepare_answer
from engine.chat_views import answer_caption, candidates_frame, criteria_frame
from engine.citations import escape_markdown, render_answer_markdown, resolve_citations, sources_list
from engine.deep_links import through_entry_point
from engine.llm import LlmError
from engine.llm_backends import llm_backend
from engine.workspace import open_knowledge_base

through_entry_point("pages/chat.py")
settings = st.session_state["settings"]
history: list[int] = st.session_state.setdefault("chat_answers", [])

st.title("Which model should I deploy?")
st.caption("Answers come from live MLflow metrics and the team's knowledge base; every claim links to its source.")
if current_user_is_admin():
    st.page_link("pages/knowledge.py", label="Manage the knowledge base", icon=":material/library_books:")

kb = open_knowledge_base(settings)


def show_feedback(answer_id: int) -> None:
    saved, key = feedback_for(kb.connection, answer_id), f"thumb-{answer_id}"
    if key not in st.session_state and saved is not None:
        st.session_state[key] = saved.rating  # a thumb given before a reload shows as given
    rating = st.feedback("thumbs", key=key)
    if rating is not None and (saved is None or saved.rating != rating):
        save_feedback(kb.connection, answer_id, rating)
        saved = feedback_for(kb.connection, answer_id)
    if rating == 0:
        with st.form(key=f"flag-{answer_id}"):
            wrong = st.text_area("What was wrong?", value=(saved.what_was_wrong or "") if saved else "", max_chars=10_000)
            right = st.text_area("The right answer (optional)", value=(saved.correct_answer or "") if saved else "", max_chars=10_000)
            if st.form_submit_button("Send"):
                try:
                    save_feedback(kb.connection, answer_id, 0, wrong, right)
                    st.success("Thanks: an admin will review this answer.")
                except ValueError as error:
                    st.error(str(error))


def show_answer(record) -> None:
    with st.chat_message("user"):
        st.text(record.question)
    with st.chat_message("assistant"):
        citations = resolve_citations(kb.connection, record.answer, log=False)
        st.markdown(render_answer_markdown(record.answer, citations))
        for notice in record.notices:
            st.caption(f":material/info: {notice}")
        if citations:
            st.markdown("**Sources**")
            st.markdown(sources_list(citations))
            cited = {source["source_id"]: source["chunks"] for source in record.sources}
            with st.expander("Cited knowledge"):
                for source_id, chunks in cited.items():
                    for chunk in chunks:
                        st.caption(escape_markdown(f"{source_id} · {chunk['title']}"))
                        st.text(chunk["text"])
        if record.candidates:
            with st.expander("Candidates and criteria check"):
                st.dataframe(candidates_frame(record), hide_index=True, width="stretch")
                st.dataframe(criteria_frame(record), hide_index=True, width="stretch")
        st.caption(answer_caption(record))
        show_feedback(record.id)


try:
    for answer_id in history:
        show_answer(load_answer(kb.connection, answer_id))
    question = st.chat_input("Which model should I deploy for tumour screening?", max_chars=20_000)
    if question is not None:
        with st.chat_message("user"):
            st.text(question)
        try:
            with st.status("Reading the registry and the knowledge base...") as status:
                prepared = prepare_answer(settings, kb, question)
                status.update(label=f"Use case: {prepared.match.use_case or 'not recognised'}", state="complete", expanded=False)
        except QuestionError as error:
            st.warning(f"Nothing to answer: {error}.")
            st.stop()
        backend = llm_backend(settings)  # loads nothing yet: a failure shows while streaming
        draft, error, started = None, None, time.perf_counter()
        if prepared.messages is not None:
            with st.chat_message("assistant"):
                st.caption("Drafting. The answer is checked against the metrics before it is shown.")
                try:
                    draft = st.write_stream(draft_stream(prepared, backend, settings.llm_max_new_tokens))
                    draft = draft if isinstance(draft, str) else "".join(map(str, draft))
                except LlmError as failure:
                    error = str(failure)
        with st.spinner("Checking the answer..."):
            answer = finish_answer(kb, prepared, backend, draft, max_new_tokens=settings.llm_max_new_tokens, draft_error=error,
                                   generation_ms=(time.perf_counter() - started) * 1000 if prepared.messages is not None else None)
        history.append(answer.record_id)
        st.rerun()
finally:
    kb.connection.close()
