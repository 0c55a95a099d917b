"""Issue 14, findings 2 and 4: nobody can lock the administrator out or guess in parallel past the login throttle,
and only verified emails from the expected issuers make OIDC administrators.

The throttle runs on a clock the test holds still (or moves), so a refusal here is the throttle's decision, never
the time a check took; bcrypt is real, at a low cost.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine.access import local_account, roles
from engine.core.settings import SettingsError, load_settings

pytestmark = pytest.mark.usefixtures("real_access")

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery"
WRONG = "Wrong user name or password."
ADMIN = "198.51.100.2"  # documentation addresses (RFC 5737)
VISITOR = "203.0.113.7"


@pytest.fixture
def account(monkeypatch, tmp_path) -> Path:
    """The local administrator's account file, hashed at a cost of 8 (a few milliseconds a check)."""
    monkeypatch.setattr(local_account, "ROUNDS", 8)
    path = tmp_path / "admin.json"
    local_account.set_password(path, "admin", PASSWORD)
    return path


@pytest.fixture
def clock() -> list[float]:
    return [1000.0]


@pytest.fixture
def throttle(clock) -> local_account.LoginThrottle:
    return local_account.LoginThrottle(clock=lambda: clock[0])


def attempt(account: Path, throttle, client: str, password: str) -> str:
    """What the login form would say: "ok", or the problem."""
    result = local_account.check_login(account, "admin", password, client=client, throttle=throttle)
    return "ok" if result.account else result.problem


def test_a_visitors_wrong_attempts_neither_delay_nor_refuse_the_admins_login(account, throttle):
    for _ in range(local_account.FREE_FAILURES):
        assert attempt(account, throttle, VISITOR, "not the password") == WRONG
    assert attempt(account, throttle, VISITOR, "still guessing").startswith("Too many failed logins")
    assert attempt(account, throttle, VISITOR, PASSWORD).startswith("Too many failed logins")  # the visitor waits
    assert attempt(account, throttle, ADMIN, PASSWORD) == "ok"
    assert attempt(account, throttle, ADMIN, "a typo in it") == WRONG
    assert attempt(account, throttle, ADMIN, PASSWORD) == "ok"  # no wait for the admin's own single failure
    assert throttle.wait_s(str(account), ADMIN) == 0


def test_under_a_distributed_attack_the_admin_still_gets_in_and_guessers_are_slowed(account, throttle, clock):
    assert attempt(account, throttle, ADMIN, PASSWORD) == "ok"  # the admin's usual address, before the attack
    attackers = [f"203.0.113.{n}" for n in range(1, 2 * local_account.ACCOUNT_FREE_FAILURES)]
    for address in attackers:
        assert attempt(account, throttle, address, "guess one") == WRONG  # each address's first attempt is checked
        clock[0] += 1.0
    for address in attackers:  # the account is under attack: one failure is enough to wait
        assert attempt(account, throttle, address, PASSWORD).startswith("Too many failed logins")
    assert attempt(account, throttle, "192.0.2.10", PASSWORD) == "ok"  # a first attempt from anywhere is checked
    assert attempt(account, throttle, ADMIN, "a typo in it") == WRONG
    assert attempt(account, throttle, ADMIN, PASSWORD) == "ok"  # an address that logged in is slowed by itself only

    assert attempt(account, throttle, "192.0.2.20", "a typo in it") == WRONG  # a new address's failure waits...
    assert attempt(account, throttle, "192.0.2.20", PASSWORD).startswith("Too many failed logins")
    clock[0] += local_account.MAX_DELAY_S
    assert attempt(account, throttle, "192.0.2.20", PASSWORD) == "ok"  # ...never longer than MAX_DELAY_S


def test_parallel_wrong_passwords_of_one_client_are_counted_before_the_next_is_checked(account, throttle):
    sessions = 4 * local_account.FREE_FAILURES
    start = threading.Barrier(sessions)

    def session(number: int) -> str:
        start.wait()  # every session submits at the same moment
        return attempt(account, throttle, VISITOR, f"guess number {number}")

    with ThreadPoolExecutor(sessions) as pool:
        answers = list(pool.map(session, range(sessions)))
    assert answers.count(WRONG) == local_account.FREE_FAILURES  # checked; all the others refused unchecked
    assert all(answer.startswith("Too many failed logins") for answer in answers if answer != WRONG)


def test_the_throttle_remembers_a_bounded_number_of_addresses_and_keeps_those_that_logged_in(monkeypatch, throttle, clock):
    monkeypatch.setattr(local_account, "MAX_CLIENTS", 3)
    throttle.succeeded("admin.json", ADMIN)
    for n in range(1, 50):
        throttle.failed("admin.json", f"203.0.113.{n}")
    assert list(throttle.accounts["admin.json"].clients) == [ADMIN, "203.0.113.48", "203.0.113.49"]
    clock[0] += local_account.FORGET_CLIENT_AFTER_S + 1
    throttle.failed("admin.json", VISITOR)
    assert list(throttle.accounts["admin.json"].clients) == [ADMIN, VISITOR]


def test_client_keys_group_an_ipv6_hosts_addresses():
    key = local_account.client_key
    assert key("203.0.113.7") == "203.0.113.7"
    assert key("::ffff:203.0.113.7") == "203.0.113.7"
    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key(None) == key("") == key("not an address") == local_account.UNKNOWN_CLIENT


# --- OIDC ------------------------------------------------------------------------------------------------------------

ALICE = {"is_logged_in": True, "email": "alice@example.com", "iss": "https://idp.example.com"}


def test_only_an_email_the_provider_verified_makes_an_admin():
    admins = ["alice@example.com"]
    for claims in ({}, {"email_verified": False}, {"email_verified": "False"}, {"email_verified": "false"},
                   {"email_verified": "0"}, {"email_verified": 0}, {"email_verified": 1}, {"email_verified": None},
                   {"email_verified": "yes"}, {"xms_edov": "0"}):
        assert not roles.oidc_identity(ALICE | claims, admins).is_admin, claims
        assert roles.oidc_identity(ALICE | claims, admins).logged_in  # still a logged-in user, with the Chat
    for claims in ({"email_verified": True}, {"email_verified": "true"}, {"email_verified": " TRUE "}, {"xms_edov": True}):
        assert roles.oidc_identity(ALICE | claims, admins).is_admin, claims


def test_with_issuers_set_only_their_tokens_make_admins():
    verified = ALICE | {"email_verified": True}
    issuers = ["https://idp.example.com", "https://login.microsoftonline.com/0000-tenant/v2.0"]
    assert roles.oidc_identity(verified, ["alice@example.com"], issuers).is_admin
    for other in ("https://evil.example.com", "https://idp.example.com/", "https://login.microsoftonline.com/1111-other/v2.0",
                  None):
        assert not roles.oidc_identity(verified | {"iss": other}, ["alice@example.com"], issuers).is_admin, other


def test_oidc_issuers_are_a_comma_separated_setting(monkeypatch):
    monkeypatch.setenv("DEPLOYWISE_OIDC_ISSUERS", " https://idp.example.com, https://login.microsoftonline.com/t/v2.0,")
    assert load_settings().oidc_issuers == ["https://idp.example.com", "https://login.microsoftonline.com/t/v2.0"]
    monkeypatch.setenv("DEPLOYWISE_OIDC_ISSUERS", "idp.example.com")
    with pytest.raises(SettingsError, match=r"DEPLOYWISE_OIDC_ISSUERS: must be comma-separated issuer URLs \(https://...\)"):
        load_settings()


def test_a_user_of_another_issuer_gets_no_admin_page(monkeypatch, tmp_path):
    monkeypatch.setenv("DEPLOYWISE_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("DEPLOYWISE_ADMIN_EMAILS", "alice@example.com")
    monkeypatch.setenv("DEPLOYWISE_OIDC_ISSUERS", "https://idp.example.com")

    def signed_in_as(issuer: str) -> str:
        at = AppTest.from_file(str(ROOT / "streamlit_app.py"), default_timeout=120)
        at.secrets["auth"] = {"redirect_uri": "http://localhost:8501/oauth2callback", "cookie_secret": "x" * 32,
                              "client_id": "deploywise", "client_secret": "s3cret",
                              "server_metadata_url": "https://idp.example.com/.well-known/openid-configuration"}
        at.user = ALICE | {"email_verified": True, "iss": issuer}
        at.run()
        assert not at.exception, at.exception
        return at.sidebar.caption[0].value

    assert signed_in_as("https://idp.example.com").endswith("(administrator)")
    assert not signed_in_as("https://evil.example.com").endswith("(administrator)")  # nor the admin pages
