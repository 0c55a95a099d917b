"""The embedded administrator account, used when no OIDC provider is configured: one user name
(`DEPLOYWISE_ADMIN_USER`, default `admin`) whose password is stored as a bcrypt hash in `<workspace>/admin.json`
(mode 600), set on the server with `deploywise admin set-password`.

The plain password is never written anywhere: the command reads it from a prompt or stdin (never from its
arguments), the login form hands it to `check_login` and keeps nothing. Setting a new password logs out every
session that logged in with the old one (a session remembers the hash it logged in with).

Failed logins slow further attempts down, in this process, per client address and per account (`LoginThrottle`
says the rule); an attempt made too early is refused without looking at the password.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import bcrypt

ROUNDS = 12  # bcrypt cost: about half a second per check on 2 cores
MIN_LENGTH = 10
MAX_BYTES = 72  # bcrypt's limit (bcrypt 5 refuses longer input rather than truncating it)
FREE_FAILURES = 5  # a client's failures in a row before its attempts wait
BASE_DELAY_S = 1.0
MAX_DELAY_S = 300.0
ACCOUNT_FREE_FAILURES = 20  # failures of all clients together within ACCOUNT_WINDOW_S before the account slows down
ACCOUNT_WINDOW_S = 3600.0
FORGET_CLIENT_AFTER_S = 86_400.0  # a client unseen this long starts afresh
MAX_CLIENTS = 10_000  # clients remembered per account, the least recently seen forgotten first
UNKNOWN_CLIENT = "unknown address"  # every client whose address the server does not know shares this key


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


def client_key(address: str | None) -> str:
    """The throttle's key for a client's IP address: an IPv6 address counts as its /64 network (one host usually has
    a whole one to pick from), an IPv4-mapped one as the IPv4 address; no or no valid address is UNKNOWN_CLIENT."""
    try:
        ip = ipaddress.ip_address((address or "").strip())
    except ValueError:
        return UNKNOWN_CLIENT
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ip.ipv4_mapped) if ip.ipv4_mapped else str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def backoff_s(failures: int, free: int) -> float:
    """The wait after `failures` failures of which `free` cost nothing: 1 s, 2 s, 4 s... up to MAX_DELAY_S."""
    if failures < free:
        return 0.0
    return min(BASE_DELAY_S * 2 ** min(failures - free, 32), MAX_DELAY_S)


@dataclass(eq=False)
class _Client:
    lock: threading.Lock = field(default_factory=threading.Lock)  # held from the wait check to the recorded outcome
    failures: int = 0  # in a row, since this client's last success
    last_failure: float = 0.0
    proven: bool = False  # has logged in to the account: other clients' failures never slow it
    seen: float = 0.0


@dataclass(eq=False)
class _Account:
    clients: OrderedDict[str, _Client] = field(default_factory=OrderedDict)  # least recently seen first
    failures: deque[float] = field(default_factory=lambda: deque(maxlen=ACCOUNT_FREE_FAILURES + 16))  # every client's, latest


class LoginThrottle:
    """How long a client must wait before its next login attempt on an account. Thread-safe, one per process.

    - Per client (its address, `client_key`): after FREE_FAILURES failures in a row, each attempt waits 1 s, 2 s,
      4 s... up to MAX_DELAY_S after the client's last failure; the client's success resets its count.
    - Per account, a separate budget: once all clients together failed ACCOUNT_FREE_FAILURES times within the last
      ACCOUNT_WINDOW_S, a client that has failed since its own last success and has never logged in also waits the
      account's delay (1 s, doubling per failure beyond that budget, up to MAX_DELAY_S) after its own last failure.

    So other clients' failures never refuse a client's first attempt, nor any attempt of a client that has logged in
    before, and nobody waits more than MAX_DELAY_S after their own last failure, whatever others do. A guesser gets
    FREE_FAILURES attempts per address (one once the account is under attack), then fewer and fewer, down to one
    per MAX_DELAY_S per address.
    `serialised` makes a client's attempts run one at a time, so parallel sessions of one client cannot all pass the
    wait check before any of their failures is counted.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.lock = threading.Lock()  # guards the tables below; never held while a password is checked
        self.accounts: dict[str, _Account] = {}

    @contextmanager
    def serialised(self, account: str, client: str) -> Iterator[None]:
        """Hold around the wait check, the password check and the recorded outcome of one attempt."""
        with self._client(account, client)[1].lock:
            yield

    def wait_s(self, account: str, client: str) -> float:
        state, entry = self._client(account, client)
        with self.lock:
            now = self.clock()
            delay = backoff_s(entry.failures, FREE_FAILURES)
            if entry.failures and not entry.proven:
                recent = sum(1 for moment in state.failures if moment > now - ACCOUNT_WINDOW_S)
                delay = max(delay, backoff_s(recent, ACCOUNT_FREE_FAILURES))
            return max(0.0, entry.last_failure + delay - now)

    def failed(self, account: str, client: str) -> None:
        state, entry = self._client(account, client)
        with self.lock:
            entry.failures += 1
            entry.last_failure = self.clock()
            state.failures.append(entry.last_failure)

    def succeeded(self, account: str, client: str) -> None:
        _, entry = self._client(account, client)
        with self.lock:
            entry.failures = 0
            entry.proven = True

    def _client(self, account: str, client: str) -> tuple[_Account, _Client]:
        """The account's and the client's records, the client's made the most recently seen. Forgets the clients unseen
        for FORGET_CLIENT_AFTER_S, and the least recently seen beyond MAX_CLIENTS, but never one that has logged in
        (a handful) nor one whose attempt runs."""
        with self.lock:
            now = self.clock()
            state = self.accounts.setdefault(account, _Account())
            entry = state.clients.pop(client, None) or _Client()
            entry.seen = now
            state.clients[client] = entry
            forgotten = []
            for key, other in state.clients.items():  # least recently seen first
                if len(state.clients) - len(forgotten) <= MAX_CLIENTS and other.seen >= now - FORGET_CLIENT_AFTER_S:
                    break
                if other is not entry and not other.proven and not other.lock.locked():
                    forgotten.append(key)
            for key in forgotten:
                del state.clients[key]
            return state, entry


THROTTLE = LoginThrottle()
_DUMMY_HASH: list[bytes] = []  # checked against instead of the account's hash for input bcrypt cannot take


def check_login(path: Path, user: str, password: str, client: str = UNKNOWN_CLIENT,
                throttle: LoginThrottle | None = None) -> LoginResult:
    """Checks a login attempt of `client` (`client_key` of its address) against the account stored at `path`."""
    throttle = throttle or THROTTLE
    account_key = str(path)
    with throttle.serialised(account_key, client):
        if (wait := throttle.wait_s(account_key, client)) > 0:
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
            throttle.succeeded(account_key, client)
            return LoginResult(account)
        throttle.failed(account_key, client)
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
