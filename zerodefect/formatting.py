"""Numbers for people: one way to print a metric that may be undefined."""

from __future__ import annotations


def fmt_rate(value: float | None, digits: int = 4) -> str:
    """A metric for a table or a log line: "n/a" when it has no denominator, never a
    misleading 0.0000 (an escape rate on a set without defective parts is unknown, not 0)."""
    return "n/a" if value is None else f"{value:.{digits}f}"
