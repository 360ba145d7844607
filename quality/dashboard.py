"""The numbers behind the dashboard: control charts, Pareto, review-based rates, throughput,
latency and model versions, per station, over the last `hours` of recorded parts.

The window ends at the newest recorded part (not the wall clock), so a replayed or paused line
still shows its last shift.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Row, and_, case, func, or_, select
from sqlalchemy.orm import Session

from zerodefect.quality.buckets import dialect_of, hour_bucket, hourly_percentile, regroup, shift_label
from zerodefect.quality.models import Defect, Inspection, Station
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
    """The dashboard over the last `hours`; control-chart subgroups are hours or shifts.

    The window's parts are counted in the database (one GROUP BY over station, hour, verdict,
    review and model version; the p95 latency and the Pareto's classes in two more), so the
    page costs the same on a record of a thousand parts or of millions: only the groups leave
    the database, never the rows."""
    newest = session.scalar(select(func.max(Inspection.captured_at)))
    if newest is None:
        return Dashboard(None)
    end = as_utc(newest)
    start = end - timedelta(hours=hours)
    window = [Inspection.captured_at >= start]
    if station:
        window.append(
            Inspection.station_id == select(Station.id).where(Station.name == station).scalar_subquery()
        )
    board = Dashboard((start.isoformat(timespec="minutes"), end.isoformat(timespec="minutes")))
    groups = _groups(session, window)
    names = dict(session.execute(select(Station.id, Station.name)).all())

    hourly: dict[str, dict[str, list[int]]] = defaultdict(dict)
    spans: dict[str, dict[str, list[datetime]]] = defaultdict(dict)
    reviews: dict[str, tuple[int, tuple[str, datetime]]] = {}
    verdicts: Counter[tuple[str, str | None]] = Counter()
    for g in groups:
        name = names[g.station_id]
        tally = hourly[name].setdefault(g.hour, [0, 0])
        tally[0] += g.n
        tally[1] += g.n if g.verdict == "reject" else 0
        span = spans[name].setdefault(g.model_version, [g.first, g.last])
        span[0], span[1] = min(span[0], g.first), max(span[1], g.last)
        status = g.review_status or "unreviewed"
        count, first = reviews.get(status, (0, (name, g.first)))
        reviews[status] = (count + g.n, min(first, (name, g.first)))
        verdicts[g.verdict, g.review_status] += g.n
    latency = hourly_percentile(
        session, Inspection.latency_ms, Inspection.captured_at, Inspection.station_id, window, 0.95
    )
    for name in sorted(hourly):
        counts = [(h, n, d) for h, (n, d) in sorted(hourly[name].items())]
        board.charts[name] = p_chart(regroup(counts, shift_label) if bucket == "shift" else counts)
        board.throughput[name] = [(h, float(n)) for h, n, _ in counts]
        used = sorted(spans[name].items(), key=lambda kv: (_stamp(kv[1][0]), as_utc(kv[1][0])))
        board.versions[name] = [(v, _stamp(a), _stamp(b)) for v, (a, b) in used]
    p95: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (station_id, hour), value in sorted(latency.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        p95[names[station_id]].append((hour, value))
    board.latency_p95 = {name: p95[name] for name in sorted(hourly)}
    board.pareto = _pareto(session, window)
    # In the order each status first appears (stations by name, then time), as the page lists them.
    board.review_counts = {s: n for s, (n, _) in sorted(reviews.items(), key=lambda kv: kv[1][1])}
    board.rates = review_rates(verdicts)
    return board


def _stamp(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="seconds")


def _groups(session: Session, window: list) -> list[Row]:
    """The window's parts counted per station, hour, verdict, review status and model version,
    with each group's first and last capture time (stations by id: names are joined after)."""
    hour = hour_bucket(Inspection.captured_at, dialect_of(session))
    keys = (
        Inspection.station_id,
        hour.key,
        Inspection.verdict,
        Inspection.review_status,
        Inspection.model_version,
    )
    groups = session.execute(
        select(
            Inspection.station_id,
            hour.label.label("hour"),
            Inspection.verdict,
            Inspection.review_status,
            Inspection.model_version,
            func.count().label("n"),
            func.min(Inspection.captured_at).label("first"),
            func.max(Inspection.captured_at).label("last"),
        )
        .where(*window)
        .group_by(*keys)
    ).all()
    return groups


def _pareto(session: Session, window: list) -> dict[str, int]:
    """Defective parts per class: the reviewer's label for a confirmed reject or an escape (else
    its first defect's class); the model's first defect class for an unreviewed reject ("reject"
    if it named none); good parts and false rejects count nowhere."""
    first_defect = (
        select(Defect.class_name)
        .where(Defect.inspection_id == Inspection.id)
        .order_by(Defect.id)
        .limit(1)
        .correlate(Inspection)
        .scalar_subquery()
    )
    reviewed_bad = Inspection.review_status.in_(("confirmed", "escape"))
    judged_good = Inspection.review_status.in_(("false_reject", "good"))
    unreviewed_reject = and_(
        Inspection.verdict == "reject", or_(Inspection.review_status.is_(None), ~judged_good)
    )
    cls = case(
        (reviewed_bad, func.coalesce(func.nullif(Inspection.review_label, ""), first_defect)),
        else_=func.coalesce(first_defect, "reject"),
    ).label("cls")
    rows = session.execute(
        select(cls, func.count()).where(*window, or_(reviewed_bad, unreviewed_reject)).group_by(cls)
    ).all()
    return {name: n for name, n in rows if name is not None}


def review_rates(counts: Mapping[tuple[str, str | None], int]) -> dict[str, float]:
    """Rates estimated from reviews, from the window's parts counted by (verdict, review status):
    - false-reject rate: the share of reviewed rejects that were good;
    - audit escape share: the share of audited passes that were defective;
    - estimated escape rate: escaped / (escaped + truly rejected), scaling both shares up to
      all the window's passes and rejects.
    """

    def total(verdict: str, *statuses: str) -> int:
        return sum(n for (v, s), n in counts.items() if v == verdict and (not statuses or s in statuses))

    rejects, passes = total("reject"), total("pass")
    judged, audited = total("reject", "confirmed", "false_reject"), total("pass", "good", "escape")
    out: dict[str, float] = {}
    if judged:
        out["false-reject rate"] = total("reject", "false_reject") / judged
    if audited:
        share = total("pass", "escape") / audited
        out["audit escape share"] = share
        escaped = share * passes
        caught = rejects * (1 - out.get("false-reject rate", 0.0))
        out["estimated escape rate"] = escaped / (escaped + caught) if escaped + caught else 0.0
    return out
