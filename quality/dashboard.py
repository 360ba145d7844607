"""The numbers behind the dashboard: control charts, Pareto, review-based rates, throughput,
latency and model versions, per station, over the last `hours` of recorded parts.

From the first hour to a year: control-chart subgroups of 50 parts while the window holds few
hours (an hourly chart would be a point or two), else hours or shifts; counts per day or per
week once the window is long (a year is 53 points a line, not 8,760).

The window ends at the newest recorded part (not the wall clock), so a replayed or paused line
still shows its last shift.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import ColumnElement, Row, and_, case, func, or_, select
from sqlalchemy.orm import Session

from zerodefect.inference.wire import UNREAD_PREFIX
from zerodefect.quality.buckets import (
    count_where,
    dialect_of,
    hourly_percentile,
    regroup,
    shift_label,
    time_bucket,
)
from zerodefect.quality.models import Defect, Inspection, Station
from zerodefect.quality.spc import PChart, p_chart
from zerodefect.quality.store import as_utc

# Control-chart subgroups of a fixed number of parts (SPC allows them beside hours and shifts):
# the default while the window holds few hours, where an hourly chart would have a point or two.
PARTS_PER_SUBGROUP = 50
FEW_HOURS = 8
# ...as long as a station's chart stays readable: at most this many subgroups of parts.
MAX_PART_SUBGROUPS = 240
# Throughput, latency and the time-based control charts count per hour up to two days, per day
# up to two months, then per week: a year of 20 stations is 53 points a line, not 8,760.
DAY_AFTER_HOURS = 48
WEEK_AFTER_HOURS = 62 * 24
Bucket = Literal["auto", "parts", "hour", "shift"]


def time_unit(hours: int) -> str:
    """The time bucket ('hour', 'day' or 'week') of a window of `hours`."""
    return "hour" if hours <= DAY_AFTER_HOURS else "day" if hours <= WEEK_AFTER_HOURS else "week"


@dataclass
class Dashboard:
    window: tuple[str, str] | None
    # The time bucket of throughput and latency ('hour', 'day', 'week'), and the control charts'
    # subgroup: a time bucket, 'shift', or f"{n} parts".
    unit: str = "hour"
    subgroup: str = "hour"
    charts: dict[str, PChart] = field(default_factory=dict)
    pareto: dict[str, int] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    review_counts: dict[str, int] = field(default_factory=dict)
    throughput: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    latency_p95: dict[str, list[tuple[str, float]]] = field(default_factory=dict)
    versions: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)


def build_dashboard(
    session: Session,
    hours: int = 24,
    station: str | None = None,
    bucket: Bucket = "auto",
    parts: int = PARTS_PER_SUBGROUP,
) -> Dashboard:
    """The dashboard over the last `hours`. Control-chart subgroups (`bucket`) are the window's
    time bucket ('hour': per hour, day or week as the window's length asks, see time_unit),
    shifts, or `parts` parts in a row per station; 'auto' takes parts while the window holds
    fewer than FEW_HOURS hours of a station's parts, else the time bucket.

    The window's parts are counted in the database (one GROUP BY over station, time bucket,
    verdict, review and model version; the p95 latency and the Pareto's classes in two more),
    so the page costs the same on a record of a thousand parts or of millions: only the groups
    leave the database, never the rows."""
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
    unit = time_unit(hours)
    board = Dashboard((start.isoformat(timespec="minutes"), end.isoformat(timespec="minutes")), unit)
    groups = _groups(session, window, unit)
    names = dict(session.execute(select(Station.id, Station.name)).all())
    ids = {name: i for i, name in names.items()}

    per_bucket: dict[str, dict[str, list[int]]] = defaultdict(dict)
    spans: dict[str, dict[str, list[datetime]]] = defaultdict(dict)
    reviews: dict[str, tuple[int, tuple[str, datetime]]] = {}
    verdicts: Counter[tuple[str, str | None]] = Counter()
    for g in groups:
        name = names[g.station_id]
        tally = per_bucket[name].setdefault(g.hour, [0, 0])
        tally[0] += g.n
        tally[1] += g.n if g.verdict == "reject" else 0
        span = spans[name].setdefault(g.model_version, [g.first, g.last])
        span[0], span[1] = min(span[0], g.first), max(span[1], g.last)
        status = g.review_status or "unreviewed"
        count, first = reviews.get(status, (0, (name, g.first)))
        reviews[status] = (count + g.n, min(first, (name, g.first)))
        verdicts[g.verdict, g.review_status] += g.n
    board.subgroup = _subgroup(bucket, unit, per_bucket, parts)
    by_parts = _part_subgroups(session, window, parts) if board.subgroup.endswith(" parts") else {}
    latency = hourly_percentile(
        session, Inspection.latency_ms, Inspection.captured_at, Inspection.station_id, window, 0.95, unit
    )
    for name in sorted(per_bucket):
        counts = [(h, n, d) for h, (n, d) in sorted(per_bucket[name].items())]
        if board.subgroup == "shift":
            board.charts[name] = p_chart(regroup(counts, shift_label))
        elif by_parts:
            board.charts[name] = p_chart(by_parts[ids[name]])
        else:
            board.charts[name] = p_chart(counts)
        board.throughput[name] = [(h, float(n)) for h, n, _ in counts]
        used = sorted(spans[name].items(), key=lambda kv: (_stamp(kv[1][0]), as_utc(kv[1][0])))
        board.versions[name] = [(v, _stamp(a), _stamp(b)) for v, (a, b) in used]
    p95: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for (station_id, hour), value in sorted(latency.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        p95[names[station_id]].append((hour, value))
    board.latency_p95 = {name: p95[name] for name in sorted(per_bucket)}
    board.pareto = _pareto(session, window)
    # In the order each status first appears (stations by name, then time), as the page lists them.
    board.review_counts = {s: n for s, (n, _) in sorted(reviews.items(), key=lambda kv: kv[1][1])}
    board.rates = review_rates(verdicts)
    return board


def _subgroup(bucket: Bucket, unit: str, per_bucket: dict[str, dict[str, list[int]]], parts: int) -> str:
    """The control charts' subgroup for `bucket` (see build_dashboard): shifts only on an hourly
    window (a shift is finer than a day); 'auto' takes parts while every station's parts lie in
    fewer than FEW_HOURS hours and fill at most MAX_PART_SUBGROUPS subgroups."""
    if bucket == "parts":
        return f"{parts} parts"
    if bucket == "shift" and unit == "hour":
        return "shift"
    if bucket == "auto" and unit == "hour":
        few = all(len(b) < FEW_HOURS for b in per_bucket.values())
        small = all(sum(n for n, _ in b.values()) <= parts * MAX_PART_SUBGROUPS for b in per_bucket.values())
        if few and small:
            return f"{parts} parts"
    return unit


def _stamp(value: datetime) -> str:
    return as_utc(value).isoformat(timespec="seconds")


def _groups(session: Session, window: list, unit: str) -> list[Row]:
    """The window's parts counted per station, time bucket (`unit`), verdict, review status and
    model version, with each group's first and last capture time (stations by id: names are
    joined after)."""
    hour = time_bucket(Inspection.captured_at, dialect_of(session), unit)
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


# The Pareto's names for rejects that carry no defect class: the station failed safe (its model
# gave no verdict in time), or it could not read the part's code (serial UNREAD-...); any other
# reject without a class is said to be one, rather than named after its verdict.
FAILSAFE_LABEL = "fail-safe (no model verdict)"
UNREAD_LABEL = "unreadable code"
UNCLASSIFIED_LABEL = "reject without a class"


def _part_subgroups(session: Session, window: list, parts: int) -> dict[int, list[tuple[str, int, int]]]:
    """Each station's parts in capture order cut into subgroups of `parts` (the last may be
    short), as (label: the subgroup's first capture time, parts, rejects), counted in the
    database by numbering the window's parts per station."""
    ordinal = func.row_number().over(
        partition_by=Inspection.station_id, order_by=(Inspection.captured_at, Inspection.id)
    )
    numbered = (
        select(
            Inspection.station_id.label("station_id"),
            ((ordinal - 1) // parts).label("g"),
            Inspection.verdict.label("verdict"),
            Inspection.captured_at.label("at"),
        )
        .where(*window)
        .subquery()
    )
    rows = session.execute(
        select(
            numbered.c.station_id,
            numbered.c.g,
            func.count(),
            count_where(numbered.c.verdict == "reject"),
            func.min(numbered.c.at),
        )
        .group_by(numbered.c.station_id, numbered.c.g)
        .order_by(numbered.c.station_id, numbered.c.g)
    ).all()
    out: dict[int, list[tuple[str, int, int]]] = defaultdict(list)
    for station_id, _, n, d, first in rows:
        out[station_id].append((_stamp(first), int(n), int(d)))
    return out


def _pareto(session: Session, window: list) -> dict[str, int]:
    """Defective parts per class: the reviewer's label for a confirmed reject or an escape (else
    its first defect's class); the model's first defect class for an unreviewed reject, and for
    one that named none its honest reason (FAILSAFE_LABEL, UNREAD_LABEL, UNCLASSIFIED_LABEL);
    good parts and false rejects count nowhere."""
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
        else_=func.coalesce(first_defect, _no_class_reason()),
    ).label("cls")
    rows = session.execute(
        select(cls, func.count()).where(*window, or_(reviewed_bad, unreviewed_reject)).group_by(cls)
    ).all()
    return {name: n for name, n in rows if name is not None}


def _no_class_reason() -> ColumnElement[str]:
    """SQL naming why a reject has no defect class (see FAILSAFE_LABEL)."""
    unread = func.substr(Inspection.serial, 1, len(UNREAD_PREFIX)) == UNREAD_PREFIX
    return case(
        (Inspection.failsafe.is_(True), FAILSAFE_LABEL),
        (unread, UNREAD_LABEL),
        else_=UNCLASSIFIED_LABEL,
    )


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
