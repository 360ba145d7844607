"""Time buckets of recorded parts: hours and shifts, named by their start in UTC.

The dashboard's control charts and throughput, and the andon's control-limit rule, count parts
per bucket; they must agree on where an hour starts and how it is named, or an alert would name
an hour the dashboard does not show. So both count through here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from zerodefect.quality.store import as_utc

HOUR_FORMAT = "%Y-%m-%dT%H:00Z"
# Three 8-hour shifts, starting at these UTC hours.
SHIFT_STARTS = (6, 14, 22)


def hour_label(value: datetime) -> str:
    """The hour a time falls in, e.g. 2026-11-25T14:00Z."""
    return as_utc(value).strftime(HOUR_FORMAT)


def hour_end(label: str) -> datetime:
    """The end of the hour named `label` (by hour_label)."""
    return datetime.strptime(label, HOUR_FORMAT).replace(tzinfo=UTC) + timedelta(hours=1)


def shift_label(value: datetime) -> str:
    """The shift a time falls in, named by its start (the night shift before 06:00 belongs to
    the previous day's 22:00 shift)."""
    value = as_utc(value)
    start = max((h for h in SHIFT_STARTS if h <= value.hour), default=None)
    if start is None:
        value, start = value - timedelta(days=1), SHIFT_STARTS[-1]
    return value.strftime(f"%Y-%m-%dT{start:02d}:00Z")


def reject_counts(
    parts: Iterable[tuple[datetime, str]], bucket: Callable[[datetime], str] = hour_label
) -> list[tuple[str, int, int]]:
    """(label, parts, rejects) per bucket of (captured_at, verdict) pairs, oldest first: the
    subgroups of a p-chart (zerodefect.quality.spc.p_chart)."""
    counts: dict[str, list[int]] = {}
    for captured, verdict in parts:
        tally = counts.setdefault(bucket(captured), [0, 0])
        tally[0] += 1
        tally[1] += verdict == "reject"
    return [(label, n, d) for label, (n, d) in sorted(counts.items())]
