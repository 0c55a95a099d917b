"""Who may do what, decided here and nowhere else. Chat (with its Source and Log in pages) is for everyone; the admin
pages (`ADMIN_PAGES`) and every admin action are for administrators.

Who the user is:
- with an OIDC provider in `.streamlit/secrets.toml` (an `[auth]` section), the user logged in through `st.login`;
  administrators are those whose email is in `DEPLOYWISE_ADMIN_EMAILS` (an `email_verified: false` claim never
  counts). The local account is then not offered;
- otherwise the embedded local administrator (`engine.local_admin`), logged in on the Log in page for the length
  of the browser session; anyone else is an anonymous visitor.

Who the caller is, for the guards (`require_admin`) inside the engine's admin actions:
- code running in a Streamlit session acts for that session's user;
- code running in the Streamlit server outside any session (a thread of its own) acts for nobody and is refused;
- code running anywhere else (the `deploywise` CLI, scripts, Ray jobs) acts for the operator: whoever runs it on
  the server already holds the workspace, so the operator is an administrator by definition.

Streamlit is imported only when the process already has it, so the CLI does not pay for it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from engine import local_admin

LOGIN_PAGE = "pages/login.py"
LOGIN_KEY = "access_local_login"  # a LocalLogin, never a plain value a browser could send
AFTER_LOGIN_KEY = "access_after_login"  # (page, query params) a refused deep link asked for


@dataclass(frozen=True)
class AdminPage:
    path: str
    title: str
    icon: str


ADMIN_PAGES: tuple[AdminPage, ...] = (  # the navigation's Admin section, in this order; add new admin pages here
    AdminPage("pages/knowledge.py", "Knowledge", ":material/library_books:"),
    AdminPage("pages/retraining.py", "Retraining", ":material/model_training:"),
    AdminPage("pages/evaluation.py", "Evaluation", ":material/analytics:"),
    AdminPage("pages/versions.py", "LLM versions", ":material/deployed_code:"),
    AdminPage("pages/feedback.py", "Feedback review", ":material/rate_review:"),
    AdminPage("pages/sft_data.py", "SFT data", ":material/dataset:"),
)


class AccessDenied(Exception):
    """An admin action asked for by someone who is not an administrator."""


@dataclass(frozen=True)
class Identity:
    name: str | None  # the email (OIDC), the local user name, "operator", or None for an anonymous visitor
    via: Literal["oidc", "local", "operator", "anonymous", "none"]
    is_admin: bool

    @property
    def logged_in(self) -> bool:
        return self.via in ("oidc", "local")


OPERATOR = Identity("operator", "operator", True)
ANONYMOUS = Identity(None, "anonymous", False)
NOBODY = Identity(None, "none", False)  # a thread of the Streamlit server that belongs to no session


@dataclass(frozen=True)
class LocalLogin:
    """What a session keeps after a local login: the account it logged in to, as it was then."""

    user: str
    password_hash: str


def current_identity() -> Identity:
    context = _streamlit_context()
    if context == "operator":
        return OPERATOR
    if context == "server":
        return NOBODY
    return session_identity()


def current_user_is_admin() -> bool:
    return current_identity().is_admin


def require_admin(action: str = "this action") -> None:
    """Call first in every admin action: raises AccessDenied unless the caller is an administrator."""
    if not current_user_is_admin():
        raise AccessDenied(f"{action} is for administrators")


def require_admin_page(title: str) -> None:
    """Call at the top of an admin page (after `through_entry_point`): others see a refusal and nothing else."""
    import streamlit as st

    if current_user_is_admin():
        return
    st.error(f"The {title} page is for administrators.", icon=":material/lock:")
    if not current_identity().logged_in:
        st.caption("Administrators log in with **Log in** in the sidebar.")
    st.stop()


def session_identity() -> Identity:
    """The user of the current Streamlit session (see the module docstring)."""
    import streamlit as st

    settings = st.session_state.get("settings")
    if settings is None:  # a page run without the entry point: nobody was checked
        return ANONYMOUS
    if oidc_configured():
        return oidc_identity(_user_mapping(), settings.admin_emails)
    login = st.session_state.get(LOGIN_KEY)
    if isinstance(login, LocalLogin) and local_admin.still_valid(settings.admin_file, login.user, login.password_hash):
        return Identity(login.user, "local", True)
    return ANONYMOUS


def oidc_identity(user: Mapping[str, Any], admin_emails: list[str]) -> Identity:
    """The role of an OIDC user from their claims (`st.user`): an administrator when the email is listed."""
    if not user.get("is_logged_in"):
        return ANONYMOUS
    email = str(user.get("email") or "").strip().lower()
    name = email or str(user.get("name") or user.get("sub") or "unknown user")
    verified = user.get("email_verified", True) not in (False, "false")
    return Identity(name, "oidc", bool(email) and verified and email in {e.lower() for e in admin_emails})


def oidc_configured() -> bool:
    """True when `.streamlit/secrets.toml` has an `[auth]` section: users then log in through st.login."""
    return _auth_section() is not None


def oidc_providers() -> list[str | None]:
    """The providers st.login can use: None for the default one (`[auth]` itself), else each `[auth.<name>]`."""
    auth = _auth_section() or {}
    providers: list[str | None] = [None] if "client_id" in auth else []
    return providers + [name for name, value in auth.items() if isinstance(value, Mapping) and "client_id" in value]


def log_in_locally(settings, user: str, password: str) -> str | None:
    """Checks the local administrator's password; on success the session is an administrator. Returns the problem."""
    import streamlit as st

    from engine.deep_links import REQUEST_KEY

    result = local_admin.check_login(settings.admin_file, user, password)
    if result.account is None:
        return result.problem
    st.session_state[LOGIN_KEY] = LocalLogin(result.account.user, result.account.password_hash)
    if (requested := st.session_state.pop(AFTER_LOGIN_KEY, None)) is not None:
        st.session_state[REQUEST_KEY] = requested  # the entry point opens it on the next run
    return None


def log_out() -> None:
    import streamlit as st

    st.session_state.pop(LOGIN_KEY, None)
    st.session_state.pop(AFTER_LOGIN_KEY, None)
    if oidc_configured() and _user_mapping().get("is_logged_in"):
        st.logout()


def refused_deep_link(request: tuple[str, dict] | None) -> str | None:
    """Call with what `resume_requested_page` did not resume: an admin page asked for by URL is kept for after the
    login, and its title returned (the caller then shows the Log in page); None for anything else."""
    import streamlit as st

    page = next((page for page in ADMIN_PAGES if request and page.path == request[0]), None)
    if page is None:
        return None
    st.session_state[AFTER_LOGIN_KEY] = request
    return page.title


def waiting_page_title() -> str | None:
    """The title of the admin page a refused deep link asked for, while it waits for a login."""
    import streamlit as st

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


def _streamlit_context() -> Literal["session", "server", "operator"]:
    if "streamlit" not in sys.modules:
        return "operator"
    from streamlit import runtime
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    if get_script_run_ctx(suppress_warning=True) is not None:
        return "session"
    return "server" if runtime.exists() else "operator"


def _auth_section() -> Mapping[str, Any] | None:
    import streamlit as st
    from streamlit.errors import StreamlitSecretNotFoundError

    try:
        auth = st.secrets.get("auth")
    except (StreamlitSecretNotFoundError, FileNotFoundError):
        return None
    return auth if isinstance(auth, Mapping) else None


def _user_mapping() -> Mapping[str, Any]:
    import streamlit as st

    return st.user.to_dict()
