"""Admin web authentication: password hashes, server-side sessions, login throttling, CSRF, roles.

* Passwords: ``pbkdf2_sha256$<iterations>$<salt>$<base64 hash>`` (the layout Django uses), verified in
  constant time. The config holds only hashes; ``python -m bot.web.auth`` makes one.
* Sessions: a random token in an HttpOnly, SameSite=Strict cookie (Secure when ``web.secure_cookies``)
  names a session kept in memory; it ends after ``web.session_hours``, on logout, or when its user is
  removed from the config, changes password or loses the role (checked on every request against the live
  config version).
* Login throttling: after 5 failures for one username (or 20 from one address) further attempts are
  refused for a minute, without checking the password.
* CSRF: every form carries the session's token; every POST without it is refused with 403. The login form
  itself uses a double-submit token in a short-lived pre-login cookie.

Passwords and session tokens are never logged.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.config.schema import WebRole, WebUserConfig

ALGORITHM = "pbkdf2_sha256"
ITERATIONS = 310_000  # OWASP's 2023 figure for PBKDF2-HMAC-SHA256 is 600,000; 200,000 is our floor
MIN_ITERATIONS = 200_000
SALT_CHARS = string.ascii_letters + string.digits

SESSION_COOKIE = "gonghao_session"
LOGIN_COOKIE = "gonghao_login"  # pre-login CSRF token (double submit)
CSRF_FIELD = "csrf_token"
MAX_SESSIONS = 10_000

ROLE_RANK = {WebRole.viewer: 0, WebRole.officer: 1, WebRole.admin: 2}
ROLE_LABELS = {WebRole.viewer: "查看", WebRole.officer: "民警", WebRole.admin: "管理员"}

Clock = Callable[[], float]  # seconds, monotonic


# -- passwords --------------------------------------------------------------------------------------
def hash_password(password: str, *, iterations: int = ITERATIONS, salt: str | None = None) -> str:
    if iterations < MIN_ITERATIONS:
        raise ValueError(f"use at least {MIN_ITERATIONS} iterations")
    if not password:
        raise ValueError("empty password")
    salt = salt or "".join(secrets.choice(SALT_CHARS) for _ in range(22))
    if "$" in salt:
        raise ValueError("the salt must not contain '$'")
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("utf-8"), iterations)
    return f"{ALGORITHM}${iterations}${salt}${base64.b64encode(digest).decode('ascii')}"


def verify_password(password: str, password_hash: str) -> bool:
    """True when ``password`` matches; False for a wrong password or a malformed hash (never raises)."""
    try:
        algorithm, iterations_text, salt, expected = password_hash.split("$")
        iterations = int(iterations_text)
    except (ValueError, AttributeError):
        return False
    if algorithm != ALGORITHM or not 0 < iterations <= 10_000_000 or not salt or not expected:
        return False
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt.encode("utf-8"), iterations)
    actual = base64.b64encode(digest).decode("ascii")
    return hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii", "replace"))


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the username is unknown, so that the answer takes as long as for a real user."""
    return hash_password(secrets.token_hex(16), iterations=ITERATIONS, salt="timing-equaliser")


def check_login(users: list[WebUserConfig], username: str, password: str) -> WebUserConfig | None:
    """The user whose name and password match, else None. Slow by design (PBKDF2): run it in a thread."""
    user = next((u for u in users if hmac.compare_digest(u.username.encode(), username.encode())), None)
    if user is None:
        verify_password(password, _dummy_hash())
        return None
    return user if verify_password(password, user.password_hash) else None


def has_role(role: WebRole, needed: WebRole) -> bool:
    return ROLE_RANK[role] >= ROLE_RANK[needed]


def _fingerprint(user: WebUserConfig) -> str:
    """Changes when the user's password hash changes: their sessions end then."""
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:16]


# -- sessions ---------------------------------------------------------------------------------------
@dataclass
class WebSession:
    token: str
    username: str
    csrf: str
    expires: float
    fingerprint: str
    role: WebRole = WebRole.viewer  # refreshed from the live config on every request
    officer: str | None = None


@dataclass
class SessionStore:
    """Sessions in memory, keyed by the cookie's random token. A restart logs everyone out."""

    clock: Clock = time.monotonic
    sessions: dict[str, WebSession] = field(default_factory=dict)

    def create(self, user: WebUserConfig, hours: int) -> WebSession:
        self._prune()
        if len(self.sessions) >= MAX_SESSIONS:  # drop the oldest rather than grow without bound
            oldest = min(self.sessions.values(), key=lambda s: s.expires)
            self.sessions.pop(oldest.token, None)
        session = WebSession(
            token=secrets.token_urlsafe(32), username=user.username, csrf=secrets.token_urlsafe(32),
            expires=self.clock() + hours * 3600, fingerprint=_fingerprint(user), role=user.role,
            officer=user.officer,
        )
        self.sessions[session.token] = session
        return session

    def get(self, token: str | None, users: list[WebUserConfig]) -> WebSession | None:
        """The live session for ``token``, with role and officer as the current config says; None (and the
        session dropped) when expired or when the user was removed or changed password."""
        if not token:
            return None
        session = self.sessions.get(token)
        if session is None:
            return None
        user = next((u for u in users if u.username == session.username), None)
        if session.expires <= self.clock() or user is None or _fingerprint(user) != session.fingerprint:
            self.sessions.pop(token, None)
            return None
        session.role, session.officer = user.role, user.officer
        return session

    def end(self, token: str | None) -> None:
        if token:
            self.sessions.pop(token, None)

    def _prune(self) -> None:
        now = self.clock()
        for token in [t for t, s in self.sessions.items() if s.expires <= now]:
            del self.sessions[token]


# -- login throttling -------------------------------------------------------------------------------
@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


@dataclass
class LoginLimiter:
    """Counts failed logins per username and per client address; too many lock that key for a while."""

    clock: Clock = time.monotonic
    per_user: int = 5
    per_address: int = 20
    lockout_seconds: float = 60.0
    forget_after: float = 15 * 60.0  # failures older than this are forgotten
    _keys: dict[tuple[str, str], _Failures] = field(default_factory=dict)

    def _entries(self, username: str, address: str) -> list[tuple[tuple[str, str], int]]:
        return [(("user", username.lower()), self.per_user), (("addr", address), self.per_address)]

    def locked_for(self, username: str, address: str) -> float:
        """Seconds until a login for ``username`` from ``address`` may be tried again; 0 when it may now."""
        now = self.clock()
        waits = [f.locked_until - now for key, _ in self._entries(username, address)
                 if (f := self._keys.get(key)) is not None and f.locked_until > now]
        return max(waits, default=0.0)

    def failed(self, username: str, address: str) -> None:
        now = self.clock()
        self._prune(now)
        for key, limit in self._entries(username, address):
            entry = self._keys.setdefault(key, _Failures())
            if now - entry.last > self.forget_after:
                entry.count = 0
            entry.count += 1
            entry.last = now
            if entry.count >= limit:
                entry.locked_until = now + self.lockout_seconds
                entry.count = 0

    def succeeded(self, username: str, address: str) -> None:
        self._keys.pop(("user", username.lower()), None)

    def _prune(self, now: float) -> None:
        if len(self._keys) < 10_000:
            return
        stale = [key for key, f in self._keys.items()
                 if f.locked_until <= now and now - f.last > self.forget_after]
        for key in stale:
            del self._keys[key]
        if len(self._keys) >= 10_000:  # a flood of distinct names: keep the locks, drop plain counts
            for key in [k for k, f in self._keys.items() if f.locked_until <= now]:
                del self._keys[key]


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8", "replace"), given.encode("utf-8", "replace"))


def main() -> None:
    """``python -m bot.web.auth``: prompt for a password (twice) and print its hash for ``web.users``."""
    import getpass
    import sys

    first = getpass.getpass("密码 / password: ")
    if first != getpass.getpass("再输一次 / again: "):
        print("两次输入不一致 / the two entries differ", file=sys.stderr)
        sys.exit(1)
    if len(first) < 8:
        print("密码至少 8 个字符 / use at least 8 characters", file=sys.stderr)
        sys.exit(1)
    print(hash_password(first))


if __name__ == "__main__":
    main()
