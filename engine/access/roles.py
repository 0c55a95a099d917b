"""Who may do what, decided here and nowhere else. Chat (with its Source and Log in pages) is for everyone; the admin
pages (ui.admin_page.ADMIN_PAGES) and every admin action are for administrators; knowledge that is not public
(engine.knowledge.sources) is for logged-in users and the operator (`may_read_internal`).

Who the user is:
- with an OIDC provider in `.streamlit/secrets.toml` (an `[auth]` section), the user logged in through `st.login`;
  administrators are those whose email is in `DEPLOYWISE_ADMIN_EMAILS`, verified by the provider and, when
  `DEPLOYWISE_OIDC_ISSUERS` is set, issued by one of those (`oidc_identity`). The local account is then not offered;
- otherwise the embedded local administrator (`engine.access.local_account`), logged in on the Log in page for the
  length of the browser session; anyone else is an anonymous visitor.

Who the caller is, for the guards (`require_admin`) inside the engine's admin actions:
- code running in a Streamlit session acts for that session's user;
- code running in the Streamlit server outside any session (a thread of its own) acts for nobody and is refused;
- code running anywhere else (the `deploywise` CLI, scripts, Ray jobs) acts for the operator: whoever runs it on
  the server already holds the workspace, so the operator is an administrator by definition.

The engine knows no Streamlit: the Streamlit server's entry point installs how its callers are identified
(`identify_callers_with`, done by ui.login); without it, every caller is the operator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal


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

_caller_identity: Callable[[], Identity] = lambda: OPERATOR  # noqa: E731 - replaced in the Streamlit server


def identify_callers_with(source: Callable[[], Identity]) -> None:
    """Install how the process tells who calls (ui.login does, in the Streamlit server)."""
    global _caller_identity
    _caller_identity = source


def current_identity() -> Identity:
    return _caller_identity()


def current_user_is_admin() -> bool:
    return current_identity().is_admin


def require_admin(action: str = "this action") -> None:
    """Call first in every admin action: raises AccessDenied unless the caller is an administrator."""
    if not current_user_is_admin():
        raise AccessDenied(f"{action} is for administrators")


def may_read_internal() -> bool:
    """Whether the caller may read knowledge that is not public (imported table rows, internal sources): a logged-in
    user with OIDC, the local administrator, or the operator; never an anonymous visitor."""
    identity = current_identity()
    return identity.is_admin or identity.logged_in


def oidc_identity(user: Mapping[str, Any], admin_emails: list[str], issuers: list[str] | None = None) -> Identity:
    """The role of an OIDC user from their claims (`st.user`): an administrator when the email is listed, the provider
    says it verified it, and (when `issuers` is given) the token's `iss` is one of them, exactly.

    Verified means `email_verified` is true: the JSON boolean, or the string "true" in any case (Apple, for one, may send
    strings); anything else ("False", "0", 1, a missing claim) is not. Microsoft Entra sends no
    `email_verified`: its optional claim `xms_edov` (the email's domain is verified by the tenant) counts instead.
    An Entra issuer names the tenant (https://login.microsoftonline.com/<tenant id>/v2.0), so `issuers` pins it too.
    """
    if not user.get("is_logged_in"):
        return ANONYMOUS
    email = str(user.get("email") or "").strip().lower()
    name = email or str(user.get("name") or user.get("sub") or "unknown user")
    verified = _claim_is_true(user.get("email_verified")) or _claim_is_true(user.get("xms_edov"))
    trusted_issuer = not issuers or user.get("iss") in issuers
    return Identity(name, "oidc", bool(email) and verified and trusted_issuer and email in {e.lower() for e in admin_emails})


def _claim_is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")
