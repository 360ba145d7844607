"""`zerodefect bench-ingest`: the record's ingest rate on PostgreSQL (zerodefect.bench_ingest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from zerodefect.cli.root import app, console, fail


@app.command("bench-ingest")
def bench_ingest(
    stations: Annotated[int, typer.Option(min=1, max=500, help="Simulated stations.")] = 50,
    backlog: Annotated[
        int, typer.Option(min=1, help="Parts waiting per station for the batched drain.")
    ] = 600,
    single: Annotated[
        int, typer.Option(min=1, help="Parts per station for the one-per-request figure.")
    ] = 60,
    seconds: Annotated[float, typer.Option(min=1, help="Length of the 1,500 parts/s run.")] = 20.0,
    batch_size: Annotated[int, typer.Option(min=2, max=1000, help="Forwarder batch size.")] = 200,
    batch_wait_ms: Annotated[float, typer.Option(min=0, help="Forwarder batch wait.")] = 50.0,
    andon: Annotated[
        bool, typer.Option(help="Run the record's andon at its default interval; --no-andon: ingest alone.")
    ] = True,
    out: Annotated[Path, typer.Option(help="Where the figures go.")] = Path("docs/results/ingest-bench.json"),
) -> None:
    """Simulated stations post to one record on a durable throw-away PostgreSQL: the batched and
    single-row rates, p99 outbox-to-commit at 1,500 parts/s, the backlog drain time, and the
    retention rate (`record prune` over everything stored)."""
    from zerodefect.bench_ingest import run_ingest_bench
    from zerodefect.pgcluster import PostgresError

    try:
        figures = run_ingest_bench(stations, backlog, single, seconds, batch_size, batch_wait_ms, andon)
    except (PostgresError, RuntimeError) as exc:
        raise fail(f"ingest bench: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2) + "\n")
    console.print(
        f"batched {figures['batched_parts_per_s']:,.0f} parts/s, single-row "
        f"{figures['single_row_parts_per_s']:,.0f} parts/s ({figures['batch_speedup']}x); "
        f"p99 outbox-to-commit at 1,500 parts/s: {figures['p99_commit_ms_at_1500']:,.0f} ms "
        f"(offered {figures['live']['offered_parts_per_s']:,.0f}/s); 10-minute backlog of 50 stations: "
        f"{figures['backlog_drain_minutes']} min while the plant runs, "
        f"{figures['backlog_drain_minutes_if_stopped']} min if stopped; retention (record prune) "
        f"{figures['prune_parts_per_s']:,.0f} parts/s -> {out}"
    )
