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
import ipaddress
import math
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
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
    """A login attempt that comes before its back-off is over: refused without a password check
    (HTTP 429); `retry_after` says when the next attempt is heard."""

    def __init__(self, retry_after: int):
        super().__init__(f"too many failed logins; try again in {retry_after} s")
        self.retry_after = retry_after


class LoginThrottle:
    """Back-off for failed logins, counted per username and per client address.

    Why both, and why back-off rather than a lock (OWASP ASVS 4.0 V2.2.1): counting per name
    alone let one address spray guesses over many names, and a hard lock of the name let anyone
    lock the real admin out for minutes. Here each key (a name, or an address; an IPv6 client by
    its /64) may fail a few times freely; after that, each further attempt must wait a delay
    that doubles with every failure in the last hour, up to a cap. Attempts inside the delay are
    refused before any scrypt work and do not count, so the real user with the right password
    gets in as soon as the short delay is over, from any address. With the name's numbers below
    a name sees at most about 70 wrong guesses an hour (ASVS asks for no more than 100), and one
    address spraying names gets its own, longer back-off. A success clears the name's count,
    never the address's: an attacker cannot reset their address with an account of their own.

    Memory is bounded: at most `max_tracked` keys per kind, the longest-idle forgotten first.
    """

    NAME_FREE, NAME_CAP = 3, 60.0
    ADDRESS_FREE, ADDRESS_CAP = 10, 300.0
    WINDOW_SECONDS = 3600.0

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_tracked: int = 10_000):
        self.clock = clock
        self.max_tracked = max_tracked
        self._names: OrderedDict[str, list[float]] = OrderedDict()
        self._addresses: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def address_key(address: str | None) -> str:
        """The key of a client address: itself for IPv4, its /64 for IPv6 (one host's range)."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return address or "unknown"
        return str(ipaddress.ip_network(f"{ip}/64", strict=False)) if ip.version == 6 else str(ip)

    def _recent(self, table: OrderedDict[str, list[float]], key: str, now: float) -> list[float]:
        times = [t for t in table.get(key, ()) if now - t < self.WINDOW_SECONDS]
        if times:
            table[key] = times
        else:
            table.pop(key, None)
        return times

    def _delay(self, times: list[float], free: int, cap: float, now: float) -> float:
        if len(times) < free:
            return 0.0
        return max(0.0, times[-1] + min(cap, 2.0 ** (len(times) - free)) - now)

    def attempt(self, username: str, address: str | None) -> float:
        """Seconds until this name from this address may try again; 0 admits the attempt and
        counts it as a failure at once, so a burst of parallel guesses cannot all slip through
        before the first one fails (a success takes its mark back: `succeeded`)."""
        now, where = self.clock(), self.address_key(address)
        with self._lock:
            names, addresses = (
                self._recent(self._names, username, now),
                self._recent(self._addresses, where, now),
            )
            wait = max(
                self._delay(names, self.NAME_FREE, self.NAME_CAP, now),
                self._delay(addresses, self.ADDRESS_FREE, self.ADDRESS_CAP, now),
            )
            if wait > 0:
                return wait
            for table, key, times in ((self._names, username, names), (self._addresses, where, addresses)):
                table[key] = [*times[-63:], now]
                table.move_to_end(key)
                while len(table) > self.max_tracked:
                    table.popitem(last=False)
            return 0.0

    def succeeded(self, username: str, address: str | None) -> None:
        """The right password: the name starts afresh; the address only loses this attempt's mark."""
        where = self.address_key(address)
        with self._lock:
            self._names.pop(username, None)
            times = self._addresses.get(where)
            if times:
                times.pop()


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


# ASVS 2.1.1: at least 12 characters, runs of spaces counted as one; no other composition rule
# (2.1.9), and up to 200 characters of any kind, never truncated (2.1.2 to 2.1.4).
MIN_PASSWORD = 12


def _check_password(password: str) -> None:
    if len(re.sub(" {2,}", " ", password)) < MIN_PASSWORD:
        raise AuthError(f"a password needs at least {MIN_PASSWORD} characters")


def set_password(session: Session, username: str, password: str) -> None:
    """Replace a user's password (and end their sessions)."""
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        raise AuthError(f"no user {username!r}")
    _check_password(password)
    user.password_hash = hash_password(password)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.commit()


def create_user(session: Session, username: str, password: str, role: str) -> User:
    """Add a user; refuses unknown roles, short passwords and taken names."""
    if role not in ROLES:
        raise AuthError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    _check_password(password)
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


def login(
    session: Session, username: str, password: str, throttle: LoginThrottle, address: str | None
) -> tuple[str, UserSession]:
    """Check a password and open a session; returns (cookie token, session row).

    `address` is the client's address; `throttle` holds the back-off (see LoginThrottle)."""
    wait = throttle.attempt(username, address)
    if wait > 0:
        raise LoginThrottled(math.ceil(wait))
    user = session.scalar(select(User).where(User.username == username))
    # One scrypt check whether or not the user exists: no timing oracle for usernames.
    stored = user.password_hash if user is not None else _DUMMY_HASH
    if not verify_password(password, stored) or user is None or not user.active:
        raise AuthError("wrong username or password")
    throttle.succeeded(username, address)
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
