"""Log in: the administrator's login — through the OIDC provider when one is configured, else the local account's
password form. Who is signed in, and Log out, also show in the sidebar of every page (streamlit_app.py).

Layout only: roles, password checks and the session's login live in `engine/access/` and `ui/login.py`.
"""

import streamlit as st

from engine.access import roles
from engine.access.local_account import PasswordError, read_account
from engine.core.markdown import escape_markdown
from ui import login
from ui.deep_links import through_entry_point

through_entry_point(login.LOGIN_PAGE)
settings = st.session_state["settings"]
identity = roles.current_identity()

st.title("Log in")
if waiting := login.waiting_page_title():
    st.warning(f"The {waiting} page is for administrators. Log in as an administrator to open it.", icon=":material/lock:")

if identity.is_admin:
    st.success(f"Signed in as {escape_markdown(identity.name or '')}, administrator: the admin pages are in the sidebar.",
               icon=":material/verified_user:")
elif login.oidc_configured():
    if identity.logged_in:
        st.info(f"Signed in as {escape_markdown(identity.name or '')}, who is not an administrator: the Chat is open to "
                "you. An administrator's email must be in DEPLOYWISE_ADMIN_EMAILS.")
    else:
        providers = login.oidc_providers()
        if not providers:
            st.error("The [auth] section of .streamlit/secrets.toml names no provider (client_id, client_secret, "
                     "server_metadata_url): nobody can log in.")
        for provider in providers:
            label = f"Log in with {provider}" if provider else "Log in with single sign-on"
            st.button(label, key=f"oidc_login_{provider}", type="primary", on_click=st.login, args=(provider,) if provider else ())
else:
    try:
        account = read_account(settings.admin_file)
    except PasswordError as error:
        account = None
        st.error(escape_markdown(error))
    if account is None:
        st.info("No administrator password is set yet. On the server, run `.venv/bin/deploywise admin set-password` "
                "(it asks for the password; nothing needs restarting), then log in here.")
    with st.form("local_login", clear_on_submit=True):
        user = st.text_input("User name", value=settings.admin_user, autocomplete="username")
        password = st.text_input("Password", type="password", autocomplete="current-password")
        submitted = st.form_submit_button("Log in", type="primary")
    if submitted:
        with st.spinner("Checking"):
            problem = login.log_in_locally(settings, user, password)
        if problem:
            st.error(problem)
        else:
            st.rerun()  # the navigation now holds the admin pages, and a refused deep link opens
    st.caption("The Chat needs no login. The local administrator's session lasts until the browser tab is closed or "
               "reloaded.")
