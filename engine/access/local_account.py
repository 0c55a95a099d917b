"""The embedded administrator account, used when no OIDC provider is configured: one user name
(`DEPLOYWISE_ADMIN_USER`, default `admin`) whose password is stored as a bcrypt hash in `<workspace>/admin.json`
(mode 600), set on the server with `deploywise admin set-password`.

The plain password is never written anywhere: the command reads it from a prompt or stdin (never from its
arguments), the login form hands it to `check_login` and keeps nothing. Setting a new password logs out every
session that logged in with the old one (a session remembers the hash it logged in with).

Failed logins slow further attempts down, in this process, for every client at once: after `FREE_FAILURES` failures
in a row each attempt must wait twice as long as the one before (1 s, 2 s, 4 s... up to `MAX_DELAY_S`); an
attempt made too early is refused without looking at the password. A successful login resets the count.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import bcrypt

ROUNDS = 12  # bcrypt cost: about half a second per check on 2 cores
MIN_LENGTH = 10
MAX_BYTES = 72  # bcrypt's limit (bcrypt 5 refuses longer input rather than truncating it)
FREE_FAILURES = 5
BASE_DELAY_S = 1.0
MAX_DELAY_S = 300.0


class PasswordError(ValueError):
    """A new password that cannot be used, or an unreadable account file; the message says why."""


@dataclass(frozen=True)
class LocalAccount:
    user: str
    password_hash: str
    changed_at: str


@dataclass(frozen=True)
class LoginResult:
    account: LocalAccount | None  # set when the login succeeded
    problem: str | None = None  # why it did not


def read_account(path: Path) -> LocalAccount | None:
    """The stored account, or None when no password was ever set."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return LocalAccount(str(data["user"]), str(data["password_hash"]), str(data["changed_at"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PasswordError(f"{path} is not a readable administrator account ({error}); set the password again") from None


def check_new_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordError(f"the password must have at least {MIN_LENGTH} characters")
    if len(password.encode("utf-8")) > MAX_BYTES:
        raise PasswordError(f"the password must fit in {MAX_BYTES} bytes of UTF-8 (bcrypt's limit)")
    if password != password.strip():
        raise PasswordError("the password must not start or end with spaces")


def set_password(path: Path, user: str, password: str) -> LocalAccount:
    """Hash and store the password of `user`, replacing any earlier account; the file is readable by its owner only."""
    check_new_password(password)
    if not user.strip():
        raise PasswordError("the administrator user name is empty (DEPLOYWISE_ADMIN_USER)")
    hashed = bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(ROUNDS)).decode("ascii")
    account = LocalAccount(user.strip(), hashed, datetime.now(UTC).isoformat(timespec="seconds"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # an umask cannot widen it, an old temporary file cannot either
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            json.dump(account.__dict__, file, indent=2)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return account


class LoginThrottle:
    """Counts failed logins in a row and says how long the next attempt must wait. Thread-safe (one per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.failures = 0
        self.last_failure = 0.0
        self.lock = threading.Lock()

    def wait_s(self) -> float:
        with self.lock:
            if self.failures < FREE_FAILURES:
                return 0.0
            delay = min(BASE_DELAY_S * 2 ** (self.failures - FREE_FAILURES), MAX_DELAY_S)
            return max(0.0, self.last_failure + delay - self.clock())

    def failed(self) -> None:
        with self.lock:
            self.failures += 1
            self.last_failure = self.clock()

    def succeeded(self) -> None:
        with self.lock:
            self.failures = 0


THROTTLE = LoginThrottle()
_DUMMY_HASH: list[bytes] = []  # checked against instead of the account's hash for input bcrypt cannot take


def check_login(path: Path, user: str, password: str, throttle: LoginThrottle | None = None) -> LoginResult:
    throttle = throttle or THROTTLE
    if (wait := throttle.wait_s()) > 0:
        return LoginResult(None, f"Too many failed logins: try again in {max(1, round(wait))} s.")
    try:
        account = read_account(path)
    except PasswordError as error:
        return LoginResult(None, str(error))
    if account is None:
        return LoginResult(None, "No administrator password is set yet: run `deploywise admin set-password` on the server.")
    candidate = password.encode("utf-8")
    if len(candidate) > MAX_BYTES:  # no stored password is that long, and bcrypt refuses it: same time, no match
        bcrypt.checkpw(b"", _dummy_hash())
        matches = False
    else:
        matches = bcrypt.checkpw(candidate, account.password_hash.encode("ascii"))
    if matches and user.strip() == account.user:
        throttle.succeeded()
        return LoginResult(account)
    throttle.failed()
    return LoginResult(None, "Wrong user name or password.")


def _dummy_hash() -> bytes:
    if not _DUMMY_HASH:
        _DUMMY_HASH.append(bcrypt.hashpw(b"not a password", bcrypt.gensalt(ROUNDS)))
    return _DUMMY_HASH[0]


def still_valid(path: Path, user: str, password_hash: str) -> bool:
    """True while the account a session logged in with is unchanged (same user, same password hash)."""
    try:
        account = read_account(path)
    except PasswordError:
        return False
    return account is not None and account.user == user and account.password_hash == password_hash
