"""The database computes the same hours, shifts and percentiles as Python does, on SQLite and on
PostgreSQL: the dashboard and the andon group parts in SQL (quality/buckets.py), and their labels
must be the ones hour_label / shift_label give, to the microsecond at an hour's edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from sqlalchemy import func, select, text

from zerodefect.quality.buckets import (
    count_where,
    dialect_of,
    hour_bucket,
    hour_label,
    hourly_percentile,
    regroup,
    shift_label,
)
from zerodefect.quality.db import record_session
from zerodefect.quality.models import Inspection, Station

# An hour's last microsecond and the next hour's first, midnight, a shift change, a time given
# at +05:30 (stored in UTC), and plain times.
TIMES = [
    datetime(2026, 11, 25, 5, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 11, 25, 6, 0, 0, tzinfo=UTC),
    datetime(2026, 11, 25, 23, 59, 59, 500000, tzinfo=UTC),
    datetime(2026, 11, 26, 0, 0, 0, 1, tzinfo=UTC),
    datetime(2026, 11, 26, 3, 10, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 11, 26, 13, 59, 59, tzinfo=UTC),
    datetime(2026, 11, 26, 14, 0, 0, tzinfo=UTC),
]


def test_sql_hours_shifts_and_p95_equal_pythons(record_db: str) -> None:
    rng = np.random.default_rng(7)
    with record_session(record_db) as session:
        stations = [Station(name=f"st-{i}", api_key_hash=f"{i:064d}") for i in (1, 2)]
        session.add_all(stations)
        session.flush()
        latencies: dict[tuple[int, str], list[float]] = {}
        for i, time in enumerate(TIMES * 3):
            station = stations[i % 2]
            # Ties, integers and fractions, so the interpolation between neighbours is exercised.
            latency = float(rng.choice([4.0, 4.0, 7.5])) if i % 3 else float(rng.uniform(1, 30))
            verdict = "reject" if i % 4 == 0 else "pass"
            session.add(
                Inspection(
                    key=f"k{i}",
                    station_id=station.id,
                    serial=f"s{i}",
                    captured_at=time.astimezone(UTC),  # as the store writes it (store.as_utc)
                    model_name="m",
                    model_version="1",
                    threshold=0.5,
                    verdict=verdict,
                    latency_ms=latency,
                )
            )
            latencies.setdefault((station.id, hour_label(time)), []).append(latency)
        session.commit()

        if dialect_of(session) == "postgresql":  # hours are UTC's whatever the session's zone
            session.execute(text("SET TIME ZONE 'Asia/Kolkata'"))
        hour = hour_bucket(Inspection.captured_at, dialect_of(session))
        labels = session.execute(select(Inspection.captured_at, hour.label)).all()
        assert [label for _, label in labels] == [hour_label(t) for t, _ in labels]
        assert {label for _, label in labels} == {hour_label(t) for t in TIMES}
        assert "2026-11-25T21:00Z" in {label for _, label in labels}  # 03:10+05:30 is 21:40 UTC

        p95 = hourly_percentile(
            session, Inspection.latency_ms, Inspection.captured_at, Inspection.station_id, [], 0.95
        )
        assert set(p95) == set(latencies)
        for key, values in latencies.items():
            assert abs(p95[key] - float(np.percentile(values, 95))) < 1e-9, key

        counts = session.execute(
            select(hour.label, func.count(), count_where(Inspection.verdict == "reject"))
            .group_by(hour.key)
            .order_by(hour.key)
        ).all()
        hourly = [(label, int(n), int(d)) for label, n, d in counts]
    expected: dict[str, list[int]] = {}
    for i, time in enumerate(TIMES * 3):
        tally = expected.setdefault(shift_label(time), [0, 0])
        tally[0] += 1
        tally[1] += i % 4 == 0
    assert regroup(hourly, shift_label) == [(label, n, d) for label, (n, d) in sorted(expected.items())]
    # The night shift before 06:00 belongs to the day before's 22:00 shift.
    assert regroup([("2026-11-26T03:00Z", 5, 1)], shift_label) == [("2026-11-25T22:00Z", 5, 1)]
