"""Seed a PostgreSQL record with millions of generated parts, to measure the dashboard and the
andon at plant size (zerodefect/bench_record.py) without a plant.

Why generated, and why COPY: a real plant's record is what the queries must stand, and posting
10 million parts through the API would take hours here; COPY writes them in minutes. The parts
look like a plant's: `stations` stations on four lines posting in turn, about 3 % rejects (a few
hours per station run hot, so the control charts have something to flag), reviews of a third
of the rejects and an audit of the sampled passes, a model roll-out two thirds of the way
through, latencies and image statistics. Only flagged parts and sampled passes name an image,
as a station's record does; no image file is written.

PostgreSQL only: SQLite is the single station's embedded record, never this size.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np

from zerodefect.quality.db import make_engine, migrate, session_factory
from zerodefect.quality.store import add_station

CHUNK = 200_000
CLASSES = np.array(["crack", "scratch", "hole", "stain"])
CLASS_WEIGHTS = [0.45, 0.3, 0.15, 0.1]
INSPECTION_COLUMNS = (
    "id, key, station_id, serial, batch, camera, captured_at, received_at, model_name, model_version, "
    "threshold, score, verdict, failsafe, latency_ms, image_sha256, image_brightness, image_contrast, "
    "image_sharpness, review_status, review_label, reviewed_by, reviewed_at"
)
DEFECT_COLUMNS = "id, inspection_id, class_name, score, x1, y1, x2, y2"
NULL = "\\N"


@dataclass(frozen=True)
class Seeded:
    parts: int
    defects: int
    seconds: float
    first: datetime
    last: datetime

    @property
    def parts_per_s(self) -> float:
        return self.parts / self.seconds


def seed_record(
    url: str, parts: int, stations: int = 20, days: float = 14.0, end: datetime | None = None, seed: int = 0
) -> Seeded:
    """Migrate the PostgreSQL record at `url` and COPY `parts` generated parts into it, spread
    evenly over `days` ending at `end`, then VACUUM ANALYZE (as autovacuum would after a load)."""
    if not url.startswith("postgresql"):
        raise ValueError(f"the seed writes with PostgreSQL's COPY; {url!r} is not a PostgreSQL URL")
    import psycopg

    migrate(url)
    engine = make_engine(url)
    with session_factory(engine)() as session:
        ids = [add_station(session, f"st-{i + 1:02d}", line=f"L{i % 4 + 1}")[0].id for i in range(stations)]
    end = end or datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    start = end - timedelta(days=days)
    rng = np.random.default_rng(seed)
    # A few hot hours per station: their reject rate is five times the station's own.
    hours = int(days * 24) + 1
    hot = rng.random((stations, hours)) < 0.01
    base = rng.uniform(0.02, 0.04, stations)
    rollout = 0.66 + 0.01 * np.arange(stations) / stations  # v2 reaches the stations one by one
    defects = 0
    began = time.perf_counter()
    libpq = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(libpq) as connection:
        for offset in range(0, parts, CHUNK):
            n = min(CHUNK, parts - offset)
            rows, extra = _chunk(rng, offset, n, parts, start, end, ids, hot, base, rollout)
            with connection.cursor().copy(f"COPY inspections ({INSPECTION_COLUMNS}) FROM STDIN") as copy:
                copy.write(rows)
            with connection.cursor().copy(f"COPY defects ({DEFECT_COLUMNS}) FROM STDIN") as copy:
                copy.write(extra[0])
            defects += extra[1]
            connection.commit()
        for table in ("inspections", "defects"):
            connection.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
            )
        connection.execute("UPDATE stations SET last_seen_at = %s", (end,))
        connection.commit()
    seconds = time.perf_counter() - began
    with psycopg.connect(libpq, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE inspections")
        connection.execute("VACUUM ANALYZE defects")
    engine.dispose()
    return Seeded(parts, defects, seconds, start, end)


def _chunk(rng, offset, n, parts, start, end, station_ids, hot, base, rollout) -> tuple[str, tuple[str, int]]:
    """COPY text for parts offset..offset+n (oldest first, ids in time order as a record's are)
    and for their defects."""
    index = np.arange(offset, offset + n)
    span_us = int((end - start).total_seconds() * 1e6)
    start64 = np.datetime64(start.replace(tzinfo=None), "us")
    captured = start64 + (index * (span_us / parts)).astype("timedelta64[us]")
    station = rng.integers(0, len(station_ids), n)
    hour = ((captured - start64) // np.timedelta64(1, "h")).astype(int)
    p_reject = base[station] * np.where(hot[station, hour], 5.0, 1.0)
    found = rng.random(n) < p_reject  # the model saw a defect
    # A fail-safe verdict (no model verdict in time) and an unread code (the codes section's
    # default policy) reject the part without a defect class, as a station does.
    failsafe = rng.random(n) < 0.0005
    unread = rng.random(n) < 0.005
    found &= ~failsafe
    reject = found | failsafe | unread
    flagged_or_sampled = reject | (rng.random(n) < 0.02)
    u = rng.random(n)
    review = np.full(n, NULL, dtype=object)
    judged = reject & (u < 0.3)
    review[judged] = np.where(rng.random(judged.sum()) < 0.8, "confirmed", "false_reject")
    audited = ~reject & flagged_or_sampled & (u < 0.5)
    review[audited] = np.where(rng.random(audited.sum()) < 0.97, "good", "escape")
    cls = CLASSES[rng.choice(len(CLASSES), n, p=CLASS_WEIGHTS)]
    has_defect = found | (review == "escape")
    label = np.where(((review == "confirmed") & found) | (review == "escape"), cls, NULL)
    version = np.where(index / parts < rollout[station], "1", "2")
    score = np.where(found, rng.uniform(0.5, 1.0, n), rng.beta(2, 8, n) * 0.5).round(4).astype(str)
    score[failsafe] = NULL  # no model verdict, no score
    latency = rng.lognormal(np.log(15.0), 0.3, n).round(2)
    ids = index + 1
    stamp = np.char.add(np.datetime_as_string(captured, unit="us"), "+00")
    reviewed_at = np.datetime_as_string(captured + np.timedelta64(1, "h"), unit="us")
    brightness = rng.normal(120, 5, n).round(2)
    contrast = rng.normal(40, 2, n).round(2)
    sharpness = rng.normal(900, 30, n).round(1)
    sids = np.asarray(station_ids)[station]
    out = io.StringIO()
    for i in range(n):
        r = review[i]
        out.write(
            f"{ids[i]}\tk{ids[i]}\t{sids[i]}\t{'UNREAD-' if unread[i] else 'S'}{ids[i]:010d}\tB{hour[i] // 8}\tcam1\t"
            f"{stamp[i]}\t{stamp[i]}\tclassifier\t{version[i]}\t0.5\t{score[i]}\t"
            f"{'reject' if reject[i] else 'pass'}\t{'t' if failsafe[i] else 'f'}\t{latency[i]}\t"
            f"{f'{ids[i]:064x}' if flagged_or_sampled[i] else NULL}\t{brightness[i]}\t{contrast[i]}\t{sharpness[i]}\t"
            f"{r}\t{label[i]}\t{'rita' if r != NULL else NULL}\t{reviewed_at[i] + '+00' if r != NULL else NULL}\n"
        )
    defect_rows = io.StringIO()
    with_defect = np.flatnonzero(has_defect)
    for i in with_defect:
        defect_rows.write(f"{ids[i]}\t{ids[i]}\t{cls[i]}\t{max(float(score[i]), 0.5)}\t10\t10\t50\t50\n")
    return out.getvalue(), (defect_rows.getvalue(), len(with_defect))
