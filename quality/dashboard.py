"""The numbers behind the dashboard: control charts, Pareto, review-based rates, throughput,
latency and model versions, per station, over the last `hours` of recorded parts.

The window ends at the newest recorded part (not the wall clock), so a replayed or paused line
still shows its last shift.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from zerodefect.quality.buckets import hour_label, reject_counts, shift_label
from zerodefect.quality.models import Inspection, Station
from zerodefect.quality.spc import PChart, p_chart
from zerodefect.quality.store import as_utc


@dataclass
class Dashboard:
    window: tuple[str, str] | None
    charts: dict[str, PChart] = field(default_factory=dict)
    pareto: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    review_counts: dict[str, int] = field(default_factory=dict)
    throughput: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    latency_p95: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    versions: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def build_dashboard(
    session: Session, hours: int = 24, station: str | None = None, bucket: str = "hour"
) -> Dashboard:
    """The dashboard over the last `hours`; control-chart subgroups are hours or shifts."""
    subgroup = shift_label if bucket == "shift" else hour_label
    newest = session.scalar(select(func.max(Inspection.captured_at)))
    if newest is None:
        return Dashboard(None)
    end = as_utc(newest)
    start = end - timedelta(hours=hours)
    query = (
        select(Inspection)
        .where(Inspection.captured_at >= start)
        .options(selectinload(Inspection.station), selectinload(Inspection.defects))
        .order_by(Inspection.captured_at)
    )
    if station:
        query = query.join(Station).where(Station.name == station)
    rows = session.scalars(query).all()
    board = Dashboard((start.isoformat(timespec="minutes"), end.isoformat(timespec="minutes")))

    per_station: dict[str, list[Inspection]] = defaultdict(list)
    for row in rows:
        per_station[row.station.name].append(row)
    pareto: Counter[str] = Counter()
    reviews: Counter[str] = Counter()
    for name, parts in sorted(per_station.items()):
        latencies: dict[str, list[float]] = defaultdict(list)
        versions: dict[str, list[str]] = {}
        for part in parts:
            if part.latency_ms is not None:
                latencies[hour_label(part.captured_at)].append(part.latency_ms)
            stamp = as_utc(part.captured_at).isoformat(timespec="seconds")
            span = versions.setdefault(part.model_version, [stamp, stamp])
            span[1] = stamp
            reviews[part.review_status or "unreviewed"] += 1
            cls = _defect_class(part)
            if cls:
                pareto[cls] += 1
        hourly = reject_counts(((p.captured_at, p.verdict) for p in parts), hour_label)
        by_subgroup = reject_counts(((p.captured_at, p.verdict) for p in parts), subgroup)
        board.charts[name] = p_chart(by_subgroup)
        board.throughput[name] = [(h, float(n)) for h, n, _ in hourly]
        board.latency_p95[name] = [(h, float(np.percentile(v, 95))) for h, v in sorted(latencies.items())]
        board.versions[name] = sorted(((v, a, b) for v, (a, b) in versions.items()), key=lambda s: s[1])
    board.pareto = dict(pareto)
    board.review_counts = dict(reviews)
    board.rates = review_rates(rows)
    return board


def _defect_class(part: Inspection) -> str | None:
    """The class a defective part counts under: the reviewer's if reviewed, else the model's."""
    if part.review_status in ("confirmed", "escape"):
        return part.review_label or (part.defects[0].class_name if part.defects else None)
    if part.review_status in ("false_reject", "good") or part.verdict != "reject":
        return None
    return part.defects[0].class_name if part.defects else "reject"


def review_rates(rows: list[Inspection]) -> dict[str, float]:
    """Rates estimated from reviews:
    - false-reject rate: the share of reviewed rejects that were good;
    - audit escape share: the share of audited passes that were defective;
    - estimated escape rate: escaped / (escaped + truly rejected), scaling both shares up to
      all the window's passes and rejects.
    """
    rejects = [r for r in rows if r.verdict == "reject"]
    passes = [r for r in rows if r.verdict == "pass"]
    judged = [r for r in rejects if r.review_status in ("confirmed", "false_reject")]
    audited = [r for r in passes if r.review_status in ("good", "escape")]
    out: dict[str, float] = {}
    if judged:
        out["false-reject rate"] = sum(r.review_status == "false_reject" for r in judged) / len(judged)
    if audited:
        share = sum(r.review_status == "escape" for r in audited) / len(audited)
        out["audit escape share"] = share
        escaped = share * len(passes)
        caught = len(rejects) * (1 - out.get("false-reject rate", 0.0))
        out["estimated escape rate"] = escaped / (escaped + caught) if escaped + caught else 0.0
    return out
