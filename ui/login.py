"""A Streamlit session's user: the local administrator's login, OIDC through st.login, and logging out.

Importing this module (the entry point does) tells engine.access.roles how the Streamlit server's callers are
identified: a session's code acts for the session's user, the server's own threads for nobody.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import streamlit as st
from streamlit import runtime
from streamlit.errors import StreamlitSecretNotFoundError
from streamlit.runtime.scriptrunner import get_script_run_ctx

from engine.access import local_account, roles
from engine.access.roles import ANONYMOUS, NOBODY, OPERATOR, Identity, oidc_identity
from ui.admin_page import ADMIN_PAGES
from ui.deep_links import REQUEST_KEY

LOGIN_PAGE = "pages/login.py"
LOGIN_KEY = "access_local_login"  # a LocalLogin, never a plain value a browser could send
AFTER_LOGIN_KEY = "access_after_login"  # (page, query params) a refused deep link asked for


@dataclass(frozen=True)
class LocalLogin:
    """What a session keeps after a local login: the account it logged in to, as it was then."""

    user: str
    password_hash: str


def caller_identity() -> Identity:
    """Who calls, in the Streamlit server: the session's user, nobody for a thread of the server's own."""
    if get_script_run_ctx(suppress_warning=True) is not None:
        return session_identity()
    return NOBODY if runtime.exists() else OPERATOR


def session_identity() -> Identity:
    """The user of the current Streamlit session (see engine.access.roles)."""
    settings = st.session_state.get("settings")
    if settings is None:  # a page run without the entry point: nobody was checked
        return ANONYMOUS
    if oidc_configured():
        return oidc_identity(st.user.to_dict(), settings.admin_emails, settings.oidc_issuers)
    login = st.session_state.get(LOGIN_KEY)
    if isinstance(login, LocalLogin) and local_account.still_valid(settings.admin_file, login.user, login.password_hash):
        return Identity(login.user, "local", True)
    return ANONYMOUS


def oidc_configured() -> bool:
    """True when `.streamlit/secrets.toml` has an `[auth]` section: users then log in through st.login."""
    return _auth_section() is not None


def oidc_providers() -> list[str | None]:
    """The providers st.login can use: None for the default one (`[auth]` itself), else each `[auth.<name>]`."""
    auth = _auth_section() or {}
    providers: list[str | None] = [None] if "client_id" in auth else []
    return providers + [name for name, value in auth.items() if isinstance(value, Mapping) and "client_id" in value]


def log_in_locally(settings, user: str, password: str) -> str | None:
    """Checks the local administrator's password; on success the session is an administrator. Returns the problem.
    The throttle knows the client by the address of its connection (`st.context.ip_address`: the TCP peer, or the
    X-Forwarded-For of a proxy the server trusts); local connections and unknown addresses share one key."""
    client = local_account.client_key(st.context.ip_address)
    result = local_account.check_login(settings.admin_file, user, password, client)
    if result.account is None:
        return result.problem
    st.session_state[LOGIN_KEY] = LocalLogin(result.account.user, result.account.password_hash)
    if (requested := st.session_state.pop(AFTER_LOGIN_KEY, None)) is not None:
        st.session_state[REQUEST_KEY] = requested  # the entry point opens it on the next run
    return None


def log_out() -> None:
    st.session_state.pop(LOGIN_KEY, None)
    st.session_state.pop(AFTER_LOGIN_KEY, None)
    if oidc_configured() and st.user.to_dict().get("is_logged_in"):
        st.logout()


def refused_deep_link(request: tuple[str, dict] | None) -> str | None:
    """Call with what `resume_requested_page` did not resume: an admin page asked for by URL is kept for after the
    login, and its title returned (the caller then shows the Log in page); None for anything else."""
    page = next((page for page in ADMIN_PAGES if request and page.path == request[0]), None)
    if page is None:
        return None
    st.session_state[AFTER_LOGIN_KEY] = request
    return page.title


def waiting_page_title() -> str | None:
    """The title of the admin page a refused deep link asked for, while it waits for a login."""
    request = st.session_state.get(AFTER_LOGIN_KEY)
    return next((page.title for page in ADMIN_PAGES if request and page.path == request[0]), None)


_ANNOUNCED: set[str] = set()


def announce_first_run(settings) -> None:
    """Once per process and workspace, tells the server console how to set the administrator password if none is."""
    key = str(settings.admin_file)
    if key in _ANNOUNCED or oidc_configured():
        return
    _ANNOUNCED.add(key)
    if not settings.admin_file.exists():
        print(f"deploywise: no administrator password is set for this workspace. To use the admin pages, run on this "
              f"server: .venv/bin/deploywise admin set-password   (user '{settings.admin_user}', stored hashed in "
              f"{settings.admin_file.resolve()})", file=sys.stderr, flush=True)


def _auth_section() -> Mapping[str, Any] | None:
    try:
        auth = st.secrets.get("auth")
    except (StreamlitSecretNotFoundError, FileNotFoundError):
        return None
    return auth if isinstance(auth, Mapping) else None


roles.identify_callers_with(caller_identity)
