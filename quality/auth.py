"""People in the review app: salted scrypt passwords, server-side sessions, ordered roles.

A session is a random token in an HttpOnly, SameSite=Strict cookie; the database keeps only its
sha256, so a copy of the table logs nobody in. State-changing requests from the app also carry
the session's CSRF token. Roles are ordered (viewer < reviewer < admin): each endpoint names the
least role it needs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from zerodefect.quality.models import ROLES, User, UserSession
from zerodefect.quality.store import hash_key

SESSION_COOKIE = "zd_session"
SESSION_HOURS = 12  # one long shift
# scrypt cost: ~50 ms per check on a station PC, 16 MB of memory; stored with each hash.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


class AuthError(ValueError):
    """A user that cannot be created or a login that fails; the message says why."""


class LoginThrottled(AuthError):
    """Too many failed logins for a name: refused without a password check (HTTP 429)."""


# Failed logins per username in a sliding window; over the limit, attempts are refused before
# any scrypt work, so guessing is slow and cannot tie up the CPU.
MAX_FAILURES, FAILURE_WINDOW_SECONDS = 5, 300
_failures: dict[str, list[float]] = {}
_failures_lock = threading.Lock()


def _recent_failures(username: str, now: float) -> list[float]:
    recent = [t for t in _failures.get(username, []) if now - t < FAILURE_WINDOW_SECONDS]
    _failures[username] = recent
    return recent


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    encode = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${encode(salt)}${encode(digest)}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    expected = base64.b64decode(digest)
    actual = hashlib.scrypt(
        password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
    )
    return hmac.compare_digest(actual, expected)


_DUMMY_HASH = hash_password(secrets.token_hex(16))


def role_at_least(role: str, needed: str) -> bool:
    return ROLES.index(role) >= ROLES.index(needed)


def set_password(session: Session, username: str, password: str) -> None:
    """Replace a user's password (and end their sessions)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AuthError(f"no user {username!r}")
    if len(password) < 8:
        raise AuthError("a password needs at least 8 characters")
    user.password_hash = hash_password(password)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.commit()


def create_user(session: Session, username: str, password: str, role: str) -> User:
    """Add a user; refuses unknown roles, short passwords and taken names."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    if len(password) < 8:
        raise AuthError("a password needs at least 8 characters")
    if not username or len(username) > 100:
        raise AuthError("a username needs 1 to 100 characters")
    if session.scalar(select(User).where(User.username == username)) is not None:
        raise AuthError(f"user {username!r} exists")
    user = User(username=username, password_hash=hash_password(password), role=role)
    session.add(user)
    try:
        session.commit()
    except IntegrityError:  # created by someone else a moment ago
        session.rollback()
        raise AuthError(f"user {username!r} exists") from None
    return user


def login(session: Session, username: str, password: str) -> tuple[str, UserSession]:
    """Check a password and open a session; returns (cookie token, session row)."""
    now = time.monotonic()
    with _failures_lock:
        recent = _recent_failures(username, now)
        if len(recent) >= MAX_FAILURES:
            wait = int(FAILURE_WINDOW_SECONDS - (now - recent[0])) + 1
            raise LoginThrottled(f"too many failed logins for {username!r}; try again in {wait} s")
    user = session.scalar(select(User).where(User.username == username))
    # One scrypt check whether or not the user exists: no timing oracle for usernames.
    stored = user.password_hash if user is not None else _DUMMY_HASH
    if not verify_password(password, stored) or user is None or not user.active:
        with _failures_lock:
            _recent_failures(username, now).append(now)
        raise AuthError("wrong username or password")
    with _failures_lock:
        _failures.pop(username, None)
    token = secrets.token_urlsafe(32)
    now = datetime.now(UTC)
    row = UserSession(
        token_hash=hash_key(token),
        csrf_token=secrets.token_urlsafe(24),
        user_id=user.id,
        created_at=now,
        expires_at=now + timedelta(hours=SESSION_HOURS),
    )
    session.add(row)
    session.execute(delete(UserSession).where(UserSession.expires_at < now))
    session.commit()
    return token, row


def session_for_token(session: Session, token: str | None) -> UserSession | None:
    """The live session behind a cookie token, or None (unknown, expired, or user disabled)."""
    if not token:
        return None
    row = session.scalar(select(UserSession).where(UserSession.token_hash == hash_key(token)))
    if row is None or not row.user.active:
        return None
    expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
    if expires < datetime.now(UTC):
        return None
    return row


def logout(session: Session, token: str | None) -> None:
    if token:
        session.execute(delete(UserSession).where(UserSession.token_hash == hash_key(token)))
        session.commit()
