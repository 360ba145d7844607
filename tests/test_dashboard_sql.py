"""The dashboard counted in SQL equals the same dashboard counted in Python over the window's
rows (what quality/dashboard.py did before it aggregated in the database), on SQLite and on
PostgreSQL, on a random record with every review status, empty labels, parts without latency
or defects, two model versions and several stations; for hours and shifts, one station or all."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import selectinload

from zerodefect.quality.buckets import hour_label, shift_label
from zerodefect.quality.dashboard import build_dashboard
from zerodefect.quality.db import record_session
from zerodefect.quality.models import Defect, Inspection, Station
from zerodefect.quality.spc import p_chart
from zerodefect.quality.store import as_utc


def _python_dashboard(session, hours: int, station: str | None, bucket: str) -> dict:
    """The dashboard's fields from every row of the window, bucketed in Python."""
    end = as_utc(max(session.scalars(select(Inspection.captured_at))))
    rows = [
        r
        for r in session.scalars(select(Inspection).options(selectinload(Inspection.defects)))
        if as_utc(r.captured_at) >= end - timedelta(hours=hours) and station in (None, r.station.name)
    ]
    rows.sort(key=lambda r: (r.station.name, as_utc(r.captured_at)))
    label = shift_label if bucket == "shift" else hour_label
    out: dict = {k: {} for k in ("charts", "throughput", "latency_p95", "versions")}
    pareto: Counter[str] = Counter()
    reviews: Counter[str] = Counter()
    for name in sorted({r.station.name for r in rows}):
        parts = [r for r in rows if r.station.name == name]
        counts: dict[str, dict[str, list[int]]] = {"hour": {}, "sub": {}}
        latencies: dict[str, list[float]] = defaultdict(list)
        spans: dict[str, list[str]] = {}
        for p in parts:
            for kind, key in (("hour", hour_label(p.captured_at)), ("sub", label(p.captured_at))):
                tally = counts[kind].setdefault(key, [0, 0])
                tally[0] += 1
                tally[1] += p.verdict == "reject"
            if p.latency_ms is not None:
                latencies[hour_label(p.captured_at)].append(p.latency_ms)
            stamp = as_utc(p.captured_at).isoformat(timespec="seconds")
            spans.setdefault(p.model_version, [stamp, stamp])[1] = stamp
            reviews[p.review_status or "unreviewed"] += 1
            first = p.defects[0].class_name if p.defects else None
            if p.review_status in ("confirmed", "escape"):
                cls = p.review_label or first
            elif p.review_status in ("false_reject", "good") or p.verdict != "reject":
                cls = None
            else:
                cls = first or "reject"
            if cls:
                pareto[cls] += 1
        out["charts"][name] = p_chart([(k, n, d) for k, (n, d) in sorted(counts["sub"].items())])
        out["throughput"][name] = [(k, float(n)) for k, (n, _) in sorted(counts["hour"].items())]
        out["latency_p95"][name] = [(k, float(np.percentile(v, 95))) for k, v in sorted(latencies.items())]
        out["versions"][name] = sorted(((v, a, b) for v, (a, b) in spans.items()), key=lambda s: s[1])
    out["pareto"], out["review_counts"] = dict(pareto), dict(reviews)
    return out


def _seed(session, parts: int = 600) -> None:
    rnd = random.Random(3)
    stations = [Station(name=f"st-{i}", api_key_hash=f"{i:064d}") for i in (3, 1, 2)]
    session.add_all(stations)
    session.flush()
    t0 = datetime(2026, 11, 25, 3, 17, tzinfo=UTC)
    for k in range(parts):
        verdict = "reject" if rnd.random() < 0.25 else "pass"
        statuses = ["confirmed", "false_reject"] if verdict == "reject" else ["good", "escape"]
        status = rnd.choice([None, None, None, *statuses])
        row = Inspection(
            key=f"k{k}",
            station_id=rnd.choice(stations).id,
            serial=f"s{k}",
            captured_at=t0 + timedelta(seconds=rnd.randint(0, 40 * 3600)),
            model_name="m",
            model_version="1" if k < parts * 2 // 3 else "2",
            threshold=0.5,
            verdict=verdict,
            latency_ms=None if rnd.random() < 0.1 else rnd.choice([rnd.random() * 20, 7.0, 3.5]),
            review_status=status,
            review_label=rnd.choice([None, "", "hole"]) if status else None,
        )
        if verdict == "reject" or status == "escape":
            for _ in range(rnd.randint(0, 2)):
                row.defects.append(Defect(class_name=rnd.choice(["crack", "scratch", "hole"]), score=0.9))
        session.add(row)
    session.commit()


def test_the_sql_dashboard_equals_the_rows_counted_in_python(record_db: str) -> None:
    with record_session(record_db) as session:
        _seed(session)
        for hours, station, bucket in ((24, None, "hour"), (5, "st-2", "shift"), (2160, None, "shift")):
            board = build_dashboard(session, hours, station, bucket)
            expected = _python_dashboard(session, hours, station, bucket)
            assert board.charts == expected["charts"]
            assert board.throughput == expected["throughput"]
            assert board.versions == expected["versions"]
            assert board.pareto == expected["pareto"]
            assert board.review_counts == expected["review_counts"]
            # The page lists review statuses in the order they first appear.
            assert list(board.review_counts) == list(expected["review_counts"])
            assert board.latency_p95.keys() == expected["latency_p95"].keys()
            for name, points in expected["latency_p95"].items():
                assert [h for h, _ in board.latency_p95[name]] == [h for h, _ in points]
                assert [v for _, v in board.latency_p95[name]] == pytest.approx(
                    [v for _, v in points], rel=1e-12
                )
