"""deploywise entry point: page setup, settings, then navigation — Chat for everyone, Admin pages for admins.

The page list is built on every run from the user's role; admin pages check the role again themselves.
"""

import streamlit as st

from engine.access import current_user_is_admin
from engine.settings import SettingsError, load_settings

st.set_page_config(page_title="deploywise", page_icon=":material/rocket_launch:", layout="wide")

try:
    st.session_state["settings"] = load_settings()
except SettingsError as error:
    st.error(f"deploywise cannot start because of its configuration: {error}", icon=":material/settings_alert:")
    st.stop()

pages = {"": [st.Page("pages/chat.py", title="Chat", icon=":material/chat:", default=True)]}
allowed = {"pages/chat.py"}
if current_user_is_admin():
    pages["Admin"] = [st.Page("pages/knowledge.py", title="Knowledge", icon=":material/library_books:")]
    allowed.add("pages/knowledge.py")
navigation = st.navigation(pages)
# A deep link that first landed in Streamlit's pages/ fallback comes back here: show it if this user may see it.
if (requested := st.session_state.pop("requested_page", None)) in allowed:
    st.switch_page(requested)
navigation.run()
