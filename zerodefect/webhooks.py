"""Signed webhooks: HMAC-SHA256 over the timestamp and the exact body, with a replay window.

The sender adds `X-ZD-Signature: t=<unix seconds>,v1=<hex>` where the hex is
HMAC-SHA256(secret, f"{t}.{body}"), with one secret per target. A receiver (a QMS, a no-code
platform) checks it with `verify`: a body changed on the way, another secret, or a timestamp
outside the window (an old request sent again) is refused. Every attempt is signed afresh, so a
delivery retried hours later is still inside the window. Within the window, the
`X-ZD-Delivery` header (one id per delivery, the same on its retries) lets a receiver drop a
repeat. Stripe and GitHub sign their webhooks the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "X-ZD-Signature"
DELIVERY_HEADER = "X-ZD-Delivery"
# Five minutes either way: wide enough for clocks a little apart, narrow enough that a captured
# request cannot be replayed later.
DEFAULT_TOLERANCE_SECONDS = 300


class SignatureError(ValueError):
    """A webhook request whose signature does not hold; the message says why."""


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str | bytes, timestamp: int | None = None) -> str:
    """The X-ZD-Signature value for `body` sent now (or at `timestamp`)."""
    key = secret.encode() if isinstance(secret, str) else secret
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(key, t, body)}"


def verify(
    body: bytes,
    header: str | None,
    secret: str | bytes,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Check a received webhook: raises SignatureError unless `header` signs exactly `body` with
    `secret` at a time within `tolerance` seconds of `now`. Returns the signed timestamp.

    Pass the raw request body, before any JSON parsing: re-serialised JSON is other bytes."""
    if not header:
        raise SignatureError(f"no {SIGNATURE_HEADER} header")
    fields: dict[str, list[str]] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        fields.setdefault(name, []).append(value)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} has no t=<unix seconds>") from None
    age = (time.time() if now is None else now) - timestamp
    if abs(age) > tolerance:
        raise SignatureError(
            f"timestamp {timestamp} is {age:+.0f} s from now; at most {tolerance:g} s either way"
        )
    key = secret.encode() if isinstance(secret, str) else secret
    expected = _digest(key, timestamp, body)
    if not any(hmac.compare_digest(expected, given) for given in fields.get("v1", [])):
        raise SignatureError("signature does not match the body (changed on the way, or another secret)")
    return timestamp
