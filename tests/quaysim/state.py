"""The simulator's data: users, OAuth tokens, app tokens, web sessions, the clock and test hooks.

``server.py`` calls into :class:`State` under its lock; nothing here does I/O. Behaviour follows
Quay at commit ffba0c70 as recorded in ``tests/data/quay-transcripts``.
"""

from __future__ import annotations

import math
import secrets
import string
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

# Quay's PERMANENT_SESSION_LIFETIME: the signed-in cookie's Expires is 31 days out (066).
SESSION_LIFETIME = 31 * 24 * 3600
# _DEFAULT_TOKEN_EXPIRATION_WINDOW "4w" in endpoints/api/appspecifictokens.py.
DEFAULT_EXPIRATION_WINDOW = 4 * 7 * 24 * 3600
_CODE_ALPHABET = string.ascii_uppercase + string.digits
# Every credential any simulator in this process has issued or accepted (token codes, OAuth
# tokens, passwords), for the secret-hygiene check of tests/hygiene.py.
_CREDENTIALS: set[str] = set()
_CREDENTIALS_LOCK = threading.Lock()


def _remember(value: str) -> None:
    with _CREDENTIALS_LOCK:
        _CREDENTIALS.add(value)


def credentials() -> frozenset[str]:
    """Every token code, OAuth token and password any simulator of this process has known."""
    with _CREDENTIALS_LOCK:
        return frozenset(_CREDENTIALS)


@dataclass
class User:
    """A Quay user; ``epoch`` is rotated by sign-out, which ends all of its sessions."""

    name: str
    password: str
    email: str
    superuser: bool = False
    orgs: tuple[str, ...] = ()
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))
    epoch: int = 0
    failed_logins: int = 0
    last_failed_login: float = 0.0


@dataclass
class OAuthToken:
    """An OAuth access token as created by ``create_user_access_token``."""

    token: str
    user: str
    scopes: frozenset[str]
    expires_at: float
    uuid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class AppToken:
    """One application token; times are sim-clock seconds."""

    uuid: str
    owner: str
    title: str
    code: str
    created: float
    expiration: float | None
    last_accessed: float | None = None


@dataclass
class Session:
    """A web session, what Quay keeps in its signed ``_csrf_token`` cookie."""

    sid: str
    csrf: str | None = None
    user: str | None = None
    epoch: int = 0
    login_time: float | None = None
    permanent: bool = False


@dataclass
class LoginResult:
    """Outcome of a password check, with Quay's exponential login backoff."""

    user: User | None
    retry_after: float | None = None


class State:
    """Everything Quay would keep in its database and Redis, plus counters for tests."""

    def __init__(self, *, token_expiration: float | None, fresh_login_timeout: float) -> None:
        self.lock = threading.RLock()
        self.token_expiration = token_expiration
        self.fresh_login_timeout = fresh_login_timeout
        self.clock_offset = 0.0
        self.users: dict[str, User] = {}
        self.oauth: dict[str, OAuthToken] = {}
        self.app_tokens: dict[str, AppToken] = {}
        self.sessions: dict[str, Session] = {}
        self.calls: Counter[str] = Counter()
        self.calls_by_auth: Counter[tuple[str, str]] = Counter()
        self.simulated_cpu_seconds = 0.0

    def now(self) -> float:
        return time.time() + self.clock_offset

    # -- users and OAuth tokens -------------------------------------------------------------

    def add_user(self, user: User) -> User:
        _remember(user.password)
        with self.lock:
            self.users[user.name] = user
        return user

    def add_oauth(self, token: OAuthToken) -> str:
        _remember(token.token)
        with self.lock:
            self.oauth[token.token] = token
        return token.token

    def valid_oauth(self, token: str) -> OAuthToken | None:
        with self.lock:
            found = self.oauth.get(token)
            if found is None or found.expires_at <= self.now() or found.user not in self.users:
                return None
            return found

    def check_password(self, username: str, password: str) -> LoginResult:
        """Quay's ``verify_user``: backoff first, then the password; failures count."""
        with self.lock:
            user = self.users.get(username)
            if user is None:
                return LoginResult(None)
            now = self.now()
            if user.failed_logins:
                # util/backoff.py: 5 * (2**n - 1) scaled by 1 s, divided by 10 -> 0.5 s after one.
                retry_at = user.last_failed_login + 5 * (2 ** user.failed_logins - 1) / 10
                if retry_at > now:
                    return LoginResult(None, retry_after=retry_at - now)
            if not secrets.compare_digest(user.password.encode(), password.encode()):
                user.failed_logins += 1
                user.last_failed_login = now
                return LoginResult(None)
            user.failed_logins = 0
            return LoginResult(user)

    # -- app tokens ---------------------------------------------------------------------------

    def create_token(self, owner: str, title: str, *, created: float | None = None,
                     expiration: float | None = None, use_config: bool = True) -> AppToken:
        with self.lock:
            at = self.now() if created is None else created
            if use_config and self.token_expiration is not None:
                expiration = at + self.token_expiration
            code = "".join(secrets.choice(_CODE_ALPHABET) for _ in range(120))
            _remember(code)
            token = AppToken(str(uuid.uuid4()), owner, title, code, at, expiration)
            self.app_tokens[token.uuid] = token
            return token

    def list_tokens(self, owner: str, *, expiring: bool) -> list[AppToken]:
        with self.lock:
            mine = [t for t in self.app_tokens.values() if t.owner == owner]
            if not expiring:
                return mine
            window = math.ceil((self.token_expiration or DEFAULT_EXPIRATION_WINDOW) * 0.1) or 1
            now = self.now()
            return [t for t in mine
                    if t.expiration is not None and now < t.expiration <= now + window]

    def get_token(self, owner: str, token_uuid: str) -> AppToken | None:
        """Lookup by uuid finds only unexpired tokens of the owner (135)."""
        with self.lock:
            token = self.app_tokens.get(token_uuid)
            if token is None or token.owner != owner or self._expired(token):
                return None
            return token

    def revoke_token(self, owner: str, token_uuid: str) -> AppToken | None:
        """Revocation works on expired tokens too (137)."""
        with self.lock:
            token = self.app_tokens.get(token_uuid)
            if token is None or token.owner != owner:
                return None
            return self.app_tokens.pop(token_uuid)

    def token_by_code(self, code: str) -> AppToken | None:
        with self.lock:
            for token in self.app_tokens.values():
                if secrets.compare_digest(token.code.encode(), code.encode()):
                    return None if self._expired(token) else token
            return None

    def touch(self, token_uuid: str) -> None:
        with self.lock:
            self.app_tokens[token_uuid].last_accessed = self.now()

    def _expired(self, token: AppToken) -> bool:
        return token.expiration is not None and token.expiration <= self.now()

    # -- sessions ----------------------------------------------------------------------------

    def new_session(self, *, csrf: str | None = None, user: str | None = None, epoch: int = 0,
                    login_time: float | None = None, permanent: bool = False) -> Session:
        with self.lock:
            session = Session(secrets.token_urlsafe(48), csrf, user, epoch, login_time, permanent)
            self.sessions[session.sid] = session
            return session

    def session_user(self, session: Session | None) -> User | None:
        """The signed-in user, unless a sign-out rotated the user's epoch since."""
        with self.lock:
            if session is None or session.user is None:
                return None
            user = self.users.get(session.user)
            if user is None or user.epoch != session.epoch:
                return None
            return user

    def is_fresh(self, session: Session) -> bool:
        with self.lock:
            return (session.login_time is not None
                    and self.now() - session.login_time <= self.fresh_login_timeout)

    def ensure_csrf(self, session: Session) -> str:
        with self.lock:
            if session.csrf is None:
                session.csrf = secrets.token_urlsafe(48)
            return session.csrf

    def sign_in(self, old: Session | None, user: User) -> Session:
        """Quay's ``common_login``: a fresh permanent session with a new CSRF token."""
        with self.lock:
            if old is not None:
                self.sessions.pop(old.sid, None)
            return self.new_session(csrf=secrets.token_urlsafe(48), user=user.name,
                                    epoch=user.epoch, login_time=self.now(), permanent=True)

    def reverify(self, session: Session) -> str:
        with self.lock:
            session.login_time = self.now()
            session.csrf = secrets.token_urlsafe(48)
            return session.csrf

    def sign_out(self, session: Session | None, user: User | None) -> None:
        """``invalidate_all_sessions``: rotating the user ends every session of that user."""
        with self.lock:
            if user is not None:
                user.epoch += 1
            if session is not None:
                session.user = None
                session.login_time = None

    # -- counters -----------------------------------------------------------------------------

    def count(self, endpoint: str, method: str, auth_kind: str) -> None:
        with self.lock:
            self.calls[endpoint] += 1
            self.calls_by_auth[(method, auth_kind)] += 1

    def add_cpu(self, seconds: float) -> None:
        with self.lock:
            self.simulated_cpu_seconds += seconds

    def reset_counters(self) -> None:
        with self.lock:
            self.calls.clear()
            self.calls_by_auth.clear()
            self.simulated_cpu_seconds = 0.0
