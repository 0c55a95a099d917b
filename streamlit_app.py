"""deploywise entry point: page setup, settings, then navigation — Chat for everyone, Admin pages for admins.

The page list is built on every run from the user's role; admin pages check the role again themselves.
"""

import streamlit as st

from engine.access import current_user_is_admin
from engine.deep_links import resume_requested_page
from engine.settings import SettingsError, load_settings

st.set_page_config(page_title="deploywise", page_icon=":material/rocket_launch:", layout="wide")

try:
    st.session_state["settings"] = load_settings()
except SettingsError as error:
    st.error(f"deploywise cannot start because of its configuration: {error}", icon=":material/settings_alert:")
    st.stop()

pages = {"": [st.Page("pages/chat.py", title="Chat", icon=":material/chat:", default=True),
              st.Page("pages/source.py", title="Source", icon=":material/link:", url_path="source", visibility="hidden")]}
allowed = {"pages/chat.py", "pages/source.py"}
if current_user_is_admin():
    pages["Admin"] = [st.Page("pages/knowledge.py", title="Knowledge", icon=":material/library_books:"),
                      st.Page("pages/retraining.py", title="Retraining", icon=":material/model_training:")]
    allowed |= {"pages/knowledge.py", "pages/retraining.py"}
navigation = st.navigation(pages)
resume_requested_page(allowed)
navigation.run()
