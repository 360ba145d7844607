"""The dashboard and the andon on a plant-size record: seed a durable throw-away PostgreSQL with
generated parts (zerodefect/seed.py), then time GET /dashboard over real HTTP and one andon
evaluation of every station, and write each of their queries' EXPLAIN (ANALYZE, BUFFERS).

    python -m zerodefect.bench_record --parts 10000000 --plans docs/query-plans.md \
        --json docs/results/record-queries.json

Targets (issue 14): the dashboard renders in < 1 s, one andon evaluation takes < 200 ms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import Engine, event, func, select

REPEATS = 3
WORK_MEM = "32MB"


@contextmanager
def captured_sql(engine: Engine) -> Iterator[list[tuple[str, object]]]:
    """Every statement the engine runs inside the block, with its parameters."""
    seen: list[tuple[str, object]] = []

    def record(_conn, _cursor, statement, parameters, _context, _many) -> None:
        seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def timed(call: Callable[[], object], repeats: int = REPEATS) -> tuple[float, float]:
    """(first call, median of the next `repeats`) in milliseconds: cold caches, then warm."""
    began = time.perf_counter()
    call()
    first = (time.perf_counter() - began) * 1000
    runs = []
    for _ in range(repeats):
        began = time.perf_counter()
        call()
        runs.append((time.perf_counter() - began) * 1000)
    return first, statistics.median(runs)


def explain(engine: Engine, statements: list[tuple[str, object]]) -> list[tuple[str, str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each distinct SELECT, in the order first run."""
    out: list[tuple[str, str]] = []
    done: set[str] = set()
    with engine.connect() as connection:
        for statement, parameters in statements:
            if not statement.lstrip().upper().startswith(("SELECT", "WITH")) or statement in done:
                continue
            done.add(statement)
            rows = connection.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters).all()
            out.append((statement, "\n".join(r[0] for r in rows)))
    return out


def run(parts: int, days: float, plans: Path | None, results: Path | None, url: str | None = None) -> dict:
    """Seed a throw-away durable cluster and measure it; or, given `url`, measure the record
    already there (seeded before by zerodefect/seed.py with `parts` over `days`: a 10-million-part
    seed takes 5 to 10 minutes here, too long to repeat for every change measured)."""
    if url is None:
        from zerodefect.pgcluster import postgres_cluster
        from zerodefect.seed import seed_record

        with postgres_cluster(durable=True) as cluster:
            url = cluster.create_database("record")
            seeded = seed_record(url, parts, days=days)
            print(
                f"seeded {seeded.parts:,} parts in {seeded.seconds:.0f} s ({seeded.parts_per_s:,.0f} parts/s)"
            )
            # A plant's server gets more than PostgreSQL's 4 MB default per sort: the dashboard's
            # p95 gathers a day of latencies (about 14 MB at 333,000 parts), in memory at 32 MB.
            cluster.execute(f"ALTER DATABASE record SET work_mem = '{WORK_MEM}'")
            seed = {"seed_seconds": round(seeded.seconds, 1), "seed_parts_per_s": round(seeded.parts_per_s)}
            figures = _measure(url, {"parts": parts, "stations": 20, "days": days} | seed, plans)
    else:
        figures = _measure(url, {"parts": parts, "stations": 20, "days": days}, plans)
    if results:
        results.write_text(json.dumps(figures, indent=1) + "\n")
    return figures


def _measure(url: str, figures: dict, plans: Path | None) -> dict:
    """Time GET /dashboard (24 h, 1 h) over HTTP and the andon on the record at `url`."""
    import os

    from zerodefect.quality.andon import AndonConfig, evaluate_all, evaluate_station, watch_stations
    from zerodefect.quality.app import create_app
    from zerodefect.quality.auth import create_user
    from zerodefect.quality.dashboard import build_dashboard
    from zerodefect.quality.models import Inspection, Station, User
    from zerodefect.services import serve_in_thread
    from zerodefect.settings import get_settings

    os.environ["ZD_RECORD_URL"] = url
    get_settings.cache_clear()
    app = create_app(get_settings())
    app.state.andon.stop()  # timed by hand below, never in the background
    engine = app.state.sessions.kw["bind"]
    with app.state.sessions() as session:
        if session.scalar(select(User.id).where(User.username == "bench")) is None:
            create_user(session, "bench", "bench password 1", "viewer")
        newest = session.scalar(select(func.max(Inspection.captured_at)))
        window = session.scalar(
            select(func.count()).where(Inspection.captured_at >= newest - timedelta(hours=24))
        )
    figures["parts_in_24h_window"] = window
    with serve_in_thread(app) as base, httpx.Client(base_url=base, timeout=120) as client:
        login = client.post("/v1/login", json={"username": "bench", "password": "bench password 1"})
        login.raise_for_status()

        def page(hours: int) -> None:
            answer = client.get("/dashboard", params={"hours": hours})
            answer.raise_for_status()
            assert 'data-chart="p-chart"' in answer.text

        for hours in (24, 1):
            first, warm = timed(lambda: page(hours))  # noqa: B023 (called at once)
            figures |= {f"dashboard_{hours}h_first_ms": round(first), f"dashboard_{hours}h_ms": round(warm)}
    config = AndonConfig()
    now = newest + timedelta(seconds=60)
    with app.state.sessions() as session:
        # The first evaluation raises the seeded record's breaches (inserts); then steady state.
        first, warm = timed(lambda: evaluate_all(session, config, now))
        figures |= {"andon_all_stations_first_ms": round(first), "andon_all_stations_ms": round(warm)}
        station = session.scalars(select(Station).order_by(Station.id)).first()
        rules = config.rules_for(station.name)
        _, one = timed(lambda: evaluate_station(session, station, rules, [], now), 10)
        figures["andon_one_station_ms"] = round(one, 1)
    print(json.dumps(figures, indent=1))
    if plans:
        with app.state.sessions() as session, captured_sql(engine) as dashboard_sql:
            build_dashboard(session)
            # The page's drift charts: one batch for every station; its plan is shown for the
            # first station (the page's batch repeats the same members for each station).
            first_station = session.scalars(select(Station).order_by(Station.id).limit(1)).all()
            watch_stations(session, first_station, lambda s: config.rules_for(s.name))
        with app.state.sessions() as session, captured_sql(engine) as andon_sql:
            evaluate_all(session, config, now)
        station_one = [(s, p) for s, p in andon_sql if not _other_station(p)]
        write_plans(plans, figures, explain(engine, dashboard_sql), explain(engine, station_one))
    engine.dispose()
    return figures


def _other_station(parameters: object) -> bool:
    """True for the andon's statements about stations after the first (the plans repeat)."""
    return isinstance(parameters, dict) and any(
        k.startswith("station_id") and v != 1 for k, v in parameters.items()
    )


def write_plans(path: Path, figures: dict, dashboard: list, andon: list) -> None:
    lines = [
        "# Query plans: the dashboard and the andon on a plant-size record",
        "",
        "Made by `python -m zerodefect.bench_record --parts {parts} --plans docs/query-plans.md "
        "--json docs/results/record-queries.json`: a durable throw-away PostgreSQL 15 "
        "(zerodefect/pgcluster.py; PostgreSQL's defaults, 128 MB shared_buffers, but work_mem {work_mem}), seeded by zerodefect/seed.py "
        "with {parts:,} parts of {stations} stations over {days:g} days ({parts_in_24h_window:,} in the "
        "dashboard's 24-hour window), on the shared 2-core machine.".format(**figures, work_mem=WORK_MEM),
        "",
        "```json",
        json.dumps(figures, indent=1),
        "```",
        "",
        "## Dashboard (`build_dashboard`: the last 24 hours, every station; then the drift charts' batch)",
        "",
    ]
    for title, plans in (("", dashboard), ("## Andon (one evaluation, the first station's queries)", andon)):
        if title:
            lines += [title, ""]
        for statement, plan in plans:
            lines += ["```sql", statement.strip(), "```", "", "```", plan, "```", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--plans", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--url", help="measure this record, already seeded with --parts over --days")
    args = parser.parse_args()
    run(args.parts, args.days, args.plans, args.json, args.url)


if __name__ == "__main__":
    main()
