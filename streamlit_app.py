"""deploywise entry point: page setup, settings, then navigation — Chat for everyone, the admin pages for administrators.

The page list is built on every run from the user's role (`engine/access/roles.py`; `ui/admin_page.py` lists the
admin pages); each admin page checks the role again, and the admin actions inside the engine check it once more. An admin
page opened by URL by someone who is not an administrator shows the Log in page instead, then that page after a
successful login.
"""

import streamlit as st

from engine.access import roles
from engine.core.markdown import escape_markdown
from engine.core.settings import SettingsError, load_settings
from ui import admin_page, login
from ui.deep_links import resume_requested_page

st.set_page_config(page_title="deploywise", page_icon=":material/rocket_launch:", layout="wide")

try:
    st.session_state["settings"] = settings = load_settings()
except SettingsError as error:
    st.error(f"deploywise cannot start because of its configuration: {escape_markdown(error)}", icon=":material/settings_alert:")
    st.stop()

pages = {"": [st.Page("pages/chat.py", title="Chat", icon=":material/chat:", default=True),
              st.Page("pages/source.py", title="Source", icon=":material/link:", url_path="source", visibility="hidden"),
              st.Page(login.LOGIN_PAGE, title="Log in", icon=":material/login:", url_path="login", visibility="hidden")]}
allowed = {"pages/chat.py", "pages/source.py", login.LOGIN_PAGE}
if roles.current_user_is_admin():
    pages["Admin"] = [st.Page(page.path, title=page.title, icon=page.icon) for page in admin_page.ADMIN_PAGES]
    allowed |= {page.path for page in admin_page.ADMIN_PAGES}
navigation = st.navigation(pages)
login.announce_first_run(settings)

identity = roles.current_identity()
with st.sidebar:
    if identity.logged_in:
        role = " (administrator)" if identity.is_admin else ""
        st.caption(f"Signed in as {escape_markdown(identity.name or '')}{role}")
        if st.button("Log out", icon=":material/logout:", key="access_log_out"):
            login.log_out()
            st.switch_page("pages/chat.py")
    else:
        st.page_link(login.LOGIN_PAGE, label="Log in", icon=":material/login:")

if login.refused_deep_link(resume_requested_page(allowed)):
    st.switch_page(login.LOGIN_PAGE)
navigation.run()
