"""Exponential back-off: how long to wait before trying again after failed attempts.

The station's forwarder (results to the record) and the record's andon webhooks both retry
forever or for long; one formula keeps them alike and safe for any number of attempts.
"""

from __future__ import annotations

# 2**64 times any base is past any cap; a larger power overflows a float after ~1024 attempts,
# which a forwarder retrying a record that is down for days reaches.
_MAX_DOUBLINGS = 64


def backoff_delay(attempts: int, base: float, cap: float) -> float:
    """Seconds to wait after `attempts` failures: base * 2**attempts, at most `cap`."""
    return min(cap, base * 2 ** min(max(attempts, 0), _MAX_DOUBLINGS))
