"""Time buckets of recorded parts: hours, shifts, days and weeks, named by their start in UTC.

The dashboard's control charts and throughput, and the andon's control-limit rule, count parts
per bucket; they must agree on where an hour starts and how it is named, or an alert would name
an hour the dashboard does not show. So both count through here.

The counting runs in the database (GROUP BY over `hour_bucket`), not in Python over the window's
rows: a plant's record holds millions of parts a day. `hour_bucket` is the one place that knows
each database's time functions; `hour_label` is its Python twin, for times already in hand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import ColumnElement, Integer, and_, case, cast, func, literal_column, select
from sqlalchemy.orm import Session

from zerodefect.quality.store import as_utc

HOUR_FORMAT = "%Y-%m-%dT%H:00Z"
DAY_FORMAT = "%Y-%m-%dT00:00Z"
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


@dataclass(frozen=True)
class HourBucket:
    """An hour in SQL: GROUP BY `key`, SELECT `label` (hour_label's text, e.g. 2026-11-25T14:00Z)."""

    key: ColumnElement
    label: ColumnElement[str]


def hour_bucket(column: ColumnElement[datetime], dialect: str) -> HourBucket:
    """SQL computing hour_label(column) in the database, so parts are grouped where they are
    (time_bucket by the hour)."""
    return time_bucket(column, dialect, "hour")


# Buckets longer than an hour, for long windows: a year of parts is drawn by the week, not the hour.
UNITS = ("hour", "day", "week")


def time_bucket(column: ColumnElement[datetime], dialect: str, unit: str = "hour") -> HourBucket:
    """SQL computing bucket_label(column, unit) in the database: the hour, the day or the
    (Monday-started, ISO) week a part falls in, named by its start like an hour.

    Stored times are UTC: SQLite keeps them as naive 'YYYY-MM-DD HH:MM:SS.ffffff' text, which
    strftime reads; PostgreSQL keeps timestamptz, truncated in UTC whatever the session's zone,
    and grouped by the truncated time (formatting each row's label first costs twice as much:
    measured in docs/query-plans.md), labelled once per group. The constants are literal SQL,
    not bound parameters, so the key renders the same in SELECT and GROUP BY (PostgreSQL
    matches them by text)."""
    if unit not in UNITS:
        raise ValueError(f"no {unit!r} bucket: one of {', '.join(UNITS)}")
    if dialect == "postgresql":
        utc = func.timezone(literal_column("'UTC'"), column)
        start = func.date_trunc(literal_column(f"'{unit}'"), utc)
        return HourBucket(start, _pg_label(start))
    if dialect == "sqlite":
        fmt = literal_column(f"'{HOUR_FORMAT if unit == 'hour' else DAY_FORMAT}'")
        # 'weekday 0' moves to the Sunday ending the ISO week (or stays on one); 6 days back is its Monday.
        monday = (literal_column("'weekday 0'"), literal_column("'-6 days'")) if unit == "week" else ()
        label = func.strftime(fmt, column, *monday)
        return HourBucket(label, label)
    raise ValueError(f"no time bucket for the {dialect} dialect (the record runs on sqlite or postgresql)")


def _pg_label(start: ColumnElement[datetime]) -> ColumnElement[str]:
    """PostgreSQL's text for a bucket's start (a UTC timestamp), as hour_label writes it."""
    return func.to_char(start, literal_column('\'YYYY-MM-DD"T"HH24":00Z"\''))


def bucket_label(value: datetime, unit: str = "hour") -> str:
    """time_bucket's label in Python, for times already in hand."""
    value = as_utc(value)
    if unit == "hour":
        return value.strftime(HOUR_FORMAT)
    if unit == "week":
        value -= timedelta(days=value.weekday())
    return value.strftime(DAY_FORMAT)


def dialect_of(session: Session) -> str:
    """The name of the database dialect behind `session` ('sqlite', 'postgresql')."""
    return session.get_bind().dialect.name


def count_where(condition: ColumnElement[bool]) -> ColumnElement[int]:
    """SQL for the number of rows where `condition` holds (0, not NULL, over no rows); written
    with CASE because PostgreSQL has no sum over booleans."""
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def regroup(
    hourly: Iterable[tuple[str, int, int]], bucket: Callable[[datetime], str]
) -> list[tuple[str, int, int]]:
    """Hourly (label, parts, rejects) summed into coarser buckets (shifts start on the hour, so
    an hour lies in one shift), oldest first."""
    counts: dict[str, list[int]] = {}
    for label, n, d in hourly:
        tally = counts.setdefault(bucket(hour_end(label) - timedelta(hours=1)), [0, 0])
        tally[0] += n
        tally[1] += d
    return [(label, n, d) for label, (n, d) in sorted(counts.items())]


def hourly_percentile(
    session: Session,
    value: ColumnElement[float],
    time: ColumnElement[datetime],
    group: ColumnElement,
    where: Iterable[ColumnElement[bool]],
    q: float,
    unit: str = "hour",
) -> dict[tuple, float]:
    """The q-quantile (0..1, linear interpolation, as numpy.percentile) of `value` per (group,
    hour, day or week of `time`), computed in the database: percentile_cont on PostgreSQL; on SQLite, which
    has none, each group's rows are ranked with window functions and only the two rows around
    the quantile leave the database."""
    dialect = dialect_of(session)
    hour = time_bucket(time, dialect, unit)
    where = [*where, value.is_not(None)]
    if dialect == "postgresql":
        # Each group's values gathered by hashing, then each small array sorted on its own: the
        # plain percentile_cont ... GROUP BY sorted the whole window by group first (635 ms
        # against 366 ms for a day of 10 million parts: docs/query-plans.md).
        grouped = (
            select(group.label("g"), hour.key.label("h"), func.array_agg(value).label("vs"))
            .where(*where)
            .group_by(group, hour.key)
            .subquery()
        )
        x = func.unnest(grouped.c.vs).column_valued("x")
        p = select(func.percentile_cont(literal_column(repr(float(q)))).within_group(x)).scalar_subquery()
        rows = session.execute(select(grouped.c.g, _pg_label(grouped.c.h), p)).all()
        return {(g, h): float(v) for g, h, v in rows}
    parts = (group, hour.key)
    ranked = (
        select(
            group.label("g"),
            hour.label.label("h"),
            value.label("v"),
            (func.row_number().over(partition_by=parts, order_by=value) - 1).label("i"),
            func.count().over(partition_by=parts).label("n"),
        )
        .where(*where)
        .subquery()
    )
    low = cast(literal_column(repr(float(q))) * (ranked.c.n - 1), Integer)
    rows = session.execute(
        select(ranked.c.g, ranked.c.h, ranked.c.n, ranked.c.i, ranked.c.v)
        .where(and_(ranked.c.i >= low, ranked.c.i <= low + 1))
        .order_by(ranked.c.g, ranked.c.h, ranked.c.i)
    ).all()
    near: dict[tuple, list] = {}
    for g, h, n, _, v in rows:
        near.setdefault((g, h), [n]).append(v)
    return {key: _lerp(q * (n - 1), vs) for key, (n, *vs) in near.items()}


def _lerp(virtual_index: float, values: list[float]) -> float:
    """numpy's linear interpolation between the values at floor(index) and the next one."""
    a = values[0]
    if len(values) == 1:
        return float(a)
    b, t = values[1], virtual_index - int(virtual_index)
    return float(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
