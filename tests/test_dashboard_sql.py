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

from zerodefect.quality.buckets import bucket_label, shift_label
from zerodefect.quality.dashboard import (
    FAILSAFE_LABEL,
    UNCLASSIFIED_LABEL,
    UNREAD_LABEL,
    build_dashboard,
    time_unit,
)
from zerodefect.quality.db import record_session
from zerodefect.quality.models import Defect, Inspection, Station
from zerodefect.quality.spc import p_chart
from zerodefect.quality.store import as_utc


def _python_dashboard(session, hours: int, station: str | None, bucket: str) -> dict:
    """The dashboard's fields from every row of the window, bucketed in Python (`bucket` is
    the subgroup the SQL dashboard chose: a time unit, 'shift' or 'N parts')."""
    end = as_utc(max(session.scalars(select(Inspection.captured_at))))
    rows = [
        r
        for r in session.scalars(select(Inspection).options(selectinload(Inspection.defects)))
        if as_utc(r.captured_at) >= end - timedelta(hours=hours) and station in (None, r.station.name)
    ]
    rows.sort(key=lambda r: (r.station.name, as_utc(r.captured_at)))
    unit = time_unit(hours)
    label = shift_label if bucket == "shift" else lambda t: bucket_label(t, unit)
    out: dict = {k: {} for k in ("charts", "throughput", "latency_p95", "versions")}
    pareto: Counter[str] = Counter()
    reviews: Counter[str] = Counter()
    for name in sorted({r.station.name for r in rows}):
        parts = [r for r in rows if r.station.name == name]
        counts: dict[str, dict[str, list[int]]] = {"hour": {}, "sub": {}}
        latencies: dict[str, list[float]] = defaultdict(list)
        spans: dict[str, list[str]] = {}
        for p in parts:
            for kind, key in (("hour", bucket_label(p.captured_at, unit)), ("sub", label(p.captured_at))):
                tally = counts[kind].setdefault(key, [0, 0])
                tally[0] += 1
                tally[1] += p.verdict == "reject"
            if p.latency_ms is not None:
                latencies[bucket_label(p.captured_at, unit)].append(p.latency_ms)
            stamp = as_utc(p.captured_at).isoformat(timespec="seconds")
            spans.setdefault(p.model_version, [stamp, stamp])[1] = stamp
            reviews[p.review_status or "unreviewed"] += 1
            first = p.defects[0].class_name if p.defects else None
            if p.review_status in ("confirmed", "escape"):
                cls = p.review_label or first
            elif p.review_status in ("false_reject", "good") or p.verdict != "reject":
                cls = None
            else:
                cls = first or (
                    FAILSAFE_LABEL
                    if p.failsafe
                    else UNREAD_LABEL
                    if p.serial.startswith("UNREAD-")
                    else UNCLASSIFIED_LABEL
                )
            if cls:
                pareto[cls] += 1
        if bucket.endswith(" parts"):
            size, ordered = int(bucket.split()[0]), sorted(parts, key=lambda r: (as_utc(r.captured_at), r.id))
            chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)]
            subgroups = [
                (
                    as_utc(c[0].captured_at).isoformat(timespec="seconds"),
                    len(c),
                    sum(r.verdict == "reject" for r in c),
                )
                for c in chunks
            ]
        else:
            subgroups = [(k, n, d) for k, (n, d) in sorted(counts["sub"].items())]
        out["charts"][name] = p_chart(subgroups)
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
            serial=f"UNREAD-{k:08x}" if rnd.random() < 0.1 else f"s{k}",
            captured_at=t0 + timedelta(seconds=rnd.randint(0, 40 * 3600)),
            model_name="m",
            model_version="1" if k < parts * 2 // 3 else "2",
            threshold=0.5,
            verdict=verdict,
            failsafe=verdict == "reject" and rnd.random() < 0.1,
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
        cases = (
            (24, None, "hour", "hour"),
            (5, "st-2", "shift", "shift"),
            (3, None, "auto", "50 parts"),  # few hours: subgroups of 50 parts
            (30, "st-1", "parts", "50 parts"),
            (72, None, "auto", "day"),
            (2160, None, "shift", "week"),  # a long window: by the week, shifts or not
        )
        for hours, station, bucket, subgroup in cases:
            board = build_dashboard(session, hours, station, bucket)
            assert board.subgroup == subgroup
            expected = _python_dashboard(session, hours, station, subgroup)
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


def test_every_chart_draws_a_single_point_and_says_what_it_waits_for() -> None:
    """The first hour's charts: one subgroup, one hour, one part of a drift series each show a
    visible mark (a line through one point draws nothing), and an empty chart names what it is
    waiting for instead of a blank frame."""
    from zerodefect.quality import charts

    one = {
        "p-chart": charts.p_chart_svg(p_chart([("2026-11-25T10:00:00+00:00", 50, 2)]), "p"),
        "lines": charts.lines_svg({"st-01": [("2026-11-25T10:00Z", 120.0)]}, "parts"),
        "limit": charts.limit_svg([1.5], 12.0, "cusum"),
    }
    for kind, svg in one.items():
        assert svg.count("<circle") == 1, kind
    # The p-chart's limits are a step under its one point, not a polyline of one point.
    ucl = one["p-chart"].split('class="ucl" points="')[1].split('"')[0]
    assert len(ucl.split()) == 2
    waiting = charts.pareto_svg({}, "Pareto", "no defective part in the window yet")
    assert "no defective part in the window yet" in waiting and "<rect" not in waiting
