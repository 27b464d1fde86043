"""Who may use the console and STOW-RS: password hashes, signed session cookies, rate limits, same-origin checks.

Why here and not under `gateway.web`: the STOW-RS receiver (`gateway.receive.stow`) checks HTTP Basic against
the same users, hashes and lockouts, and a stage must not import the console.

Why these pieces and not hand-written crypto:
- Passwords are hashed with argon2id (`argon2-cffi`, the reference implementation's binding, the OWASP first
  choice); the database holds only the PHC string. A login for a name that does not exist still runs one
  verification against a dummy hash, so timing does not tell which names exist. Verifications run one at a
  time: each takes 64 MiB for a moment, and a burst of logins must not multiply that.
- Session cookies are signed and dated with `itsdangerous` (Flask's signer) under a secret made fresh by each
  console process: a restart ends every session (people log in again), and no secret sits on disk. The cookie
  carries a random session id; the console keeps the live ids in memory so that logout, removing a user or
  changing a role ends the session at once, not at expiry. Cookies are HttpOnly (no script reads them) and
  SameSite=Strict (no other site's page or link sends them), and Secure when the console serves HTTPS.
- Each session has its own form token; every state-changing request must carry it and, when the browser sends
  an Origin header, come from the console's own origin. The token and the origin are checked before a byte of
  the request body is read (see `gateway.web.app`).
- Rate limits are sliding windows (at most N events in the last W seconds) per user and per client address (which gets four times the per-user budget: one workstation, several
  people):
  exact to count, and a test can hit the limit by counting, not by timing.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.storage.state import USER_ROLES, StateStore, User

COOKIE = "egw_session"
MIN_PASSWORD = 10
#: Failed logins are counted over this window (seconds); `[web] login_failures` of them lock the name out.
LOGIN_WINDOW = 300.0
_HASHER = PasswordHasher()


def hash_password(password: str) -> str:
    """The argon2id PHC string of `password` (refuses passwords shorter than `MIN_PASSWORD`)."""
    check_password(password)
    return _HASHER.hash(password)


def check_password(password: str) -> None:
    """Raise ValueError with the rule when `password` is too weak to be accepted."""
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password has at least {MIN_PASSWORD} characters (a passphrase of a few words is best)")
    if password.strip() != password:
        raise ValueError("a password may not start or end with white space (copy-paste slip?)")


def valid_name(name: str) -> bool:
    """User names: 1-64 letters, digits, dot, dash, underscore, @ (they appear in logs and the audit table)."""
    return 0 < len(name) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-@") for c in name)


@dataclass
class Session:
    """A live login: the cookie carries `sid` (signed); the form token is the session's own."""

    sid: str
    user: str
    csrf: str
    created: float = field(default_factory=time.time)


class SlidingWindow:
    """At most `limit` events per key in the last `window` seconds (thread-safe)."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _trim(self, key: str, now: float) -> deque[float]:
        events = self._events.setdefault(key, deque())
        while events and now - events[0] >= self.window:
            events.popleft()
        return events

    def blocked_for(self, key: str, now: float | None = None) -> float:
        """0 when another event is allowed now, else the seconds until the oldest counted one leaves the window."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._trim(key, now)
            return 0.0 if len(events) < self.limit else self.window - (now - events[0])

    def hit(self, key: str, now: float | None = None) -> float:
        """Count one event unless blocked; returns what `blocked_for` returned before counting."""
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._trim(key, now)
            if len(events) >= self.limit:
                return self.window - (now - events[0])
            events.append(now)
            if len(self._events) > 10000:  # forget idle keys so a scan of addresses cannot grow this forever
                for k in [k for k, v in self._events.items() if not v]:
                    del self._events[k]
            return 0.0

    def clear(self, key: str) -> None:
        with self._lock:
            self._events.pop(key, None)


class Authenticator:
    """Users from the state database, sessions in memory, login throttling."""

    def __init__(self, state: StateStore, *, session_hours: float, login_failures: int, secure: bool) -> None:
        self.state = state
        self.max_age = int(session_hours * 3600)
        self.secure = secure
        self._signer = URLSafeTimedSerializer(secrets.token_bytes(32), salt="enhance-gateway-console-session")
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        self._verify_lock = threading.Lock()
        self._dummy = _HASHER.hash(secrets.token_urlsafe(16))
        self.failures = SlidingWindow(login_failures, LOGIN_WINDOW)
        # one address may try a few names (a shared workstation), not a dictionary of them
        self.address_failures = SlidingWindow(4 * login_failures, LOGIN_WINDOW)

    def has_users(self) -> bool:
        return bool(self.state.users())

    def verify(self, name: str, password: str) -> User | None:
        """The user when the password matches, else None (same work whether or not the name exists)."""
        user = self.state.user(name) if valid_name(name) else None
        with self._verify_lock:
            try:
                _HASHER.verify(user.password_hash if user else self._dummy, password)
            except (VerifyMismatchError, VerificationError, InvalidHashError):
                return None
        if user is None or user.role not in USER_ROLES:
            return None
        if _HASHER.check_needs_rehash(user.password_hash):  # parameters raised since the hash was made
            self.state.set_password(user.name, _HASHER.hash(password))
        return user

    def start(self, user: User) -> tuple[Session, str]:
        """A new session for `user` and the Set-Cookie value that carries it."""
        session = Session(sid=secrets.token_urlsafe(24), user=user.name, csrf=secrets.token_urlsafe(24))
        with self._lock:
            now = time.time()
            for sid in [s for s, v in self._sessions.items() if now - v.created > self.max_age]:
                del self._sessions[sid]
            self._sessions[session.sid] = session
        return session, self.cookie(self._signer.dumps(session.sid), self.max_age)

    def resolve(self, cookie_header: str) -> tuple[Session, User] | None:
        """The live session and its (current) user named by the request's cookie, or None."""
        value = _cookie_value(cookie_header, COOKIE)
        if not value:
            return None
        try:
            sid = self._signer.loads(value, max_age=self.max_age)
        except BadSignature:  # includes SignatureExpired
            return None
        with self._lock:
            session = self._sessions.get(str(sid))
        if session is None:
            return None
        user = self.state.user(session.user)  # removed or re-roled users take effect on their next request
        if user is None or user.role not in USER_ROLES:
            self.end(session.sid)
            return None
        return session, user

    def end(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid, None)

    def cookie(self, value: str, max_age: int) -> str:
        """A Set-Cookie value: HttpOnly, SameSite=Strict, Path=/, Secure under HTTPS."""
        parts = [f"{COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict", f"Max-Age={max_age}"]
        if self.secure:
            parts.append("Secure")
        return "; ".join(parts)

    def clear_cookie(self) -> str:
        return self.cookie("", 0)


def _cookie_value(header: str, name: str) -> str:
    for item in header.split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key == name:
            return value.strip()
    return ""


def same_origin(origin: str, scheme: str, host: str) -> bool:
    """True when a browser's Origin header names this console (scheme://host[:port] as the request addressed it)."""
    if not host:
        return False
    default = {"http": "80", "https": "443"}[scheme]
    want = host if ":" in host.rsplit("]", 1)[-1] else f"{host}:{default}"
    scheme_of, sep, rest = origin.partition("://")
    if not sep or scheme_of.lower() != scheme:
        return False
    got = rest if ":" in rest.rsplit("]", 1)[-1] else f"{rest}:{default}"
    return got.lower() == want.lower()


__all__ = [
    "COOKIE", "MIN_PASSWORD", "Authenticator", "Session", "SlidingWindow", "check_password", "hash_password",
    "same_origin", "valid_name",
]
