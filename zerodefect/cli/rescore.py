"""`zerodefect rescore`: re-score the record's archived images with another bundle, locally or
on Ray, and report what would change (zerodefect.quality.rescore)."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zerodefect.cli.root import app, console, fail, user_errors


class EngineName(StrEnum):
    local = "local"
    ray = "ray"


def _when(value: str | None, option: str) -> datetime | None:
    """An ISO 8601 time in UTC (a date alone is its midnight; no zone is UTC)."""
    from zerodefect.inference.wire import to_utc

    if value is None:
        return None
    try:
        return to_utc(datetime.fromisoformat(value))
    except ValueError:
        raise fail(
            f"{option} {value!r}: not an ISO 8601 time (e.g. 2026-11-25 or 2026-11-25T06:00Z)"
        ) from None


@app.command()
def rescore(
    model: Annotated[
        str, typer.Option(help="Bundle to re-score with: models:/NAME@ALIAS|VERSION or a folder.")
    ],
    since: Annotated[
        str | None, typer.Option(help="Parts captured at or after (ISO 8601, UTC if no zone).")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Parts captured before (ISO 8601, UTC if no zone).")
    ] = None,
    station: Annotated[str | None, typer.Option(help="Only this station's parts.")] = None,
    engine: Annotated[
        EngineName, typer.Option(help="local: this process; ray: Ray Data actors.")
    ] = EngineName.local,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster (ray://head:10001); default: a local Ray with --num-cpus.")
    ] = None,
    num_cpus: Annotated[int | None, typer.Option(help="CPUs of a local Ray (default: all).")] = None,
    actors: Annotated[int | None, typer.Option(help="Ray actors (default and maximum: CPUs - 1).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Parts per Ray batch.")] = 64,
    threads: Annotated[
        int | None, typer.Option(min=1, help="ONNX Runtime threads (local: default 2-4; per Ray actor: 1).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Write the report as JSON here (the gate's --evidence).")
    ] = None,
) -> None:
    """Re-score archived parts with a bundle and report what would change: escapes it would
    have caught, new false rejects and new escapes against reviewed parts, and disagreements
    with the line by station and class. Only parts with a stored image (flagged parts and the
    sampled passes) can be re-scored. Nothing is written to the record."""
    from zerodefect.quality.db import record_session
    from zerodefect.quality.images import ImageStore
    from zerodefect.quality.rescore import archived_parts, compare, pin, rescore_local
    from zerodefect.settings import get_settings

    start, end = _when(since, "--since"), _when(until, "--until")
    if start and end and start >= end:
        raise fail("--since must be before --until")
    settings = get_settings()
    images = ImageStore(settings.image_dir, settings.record_max_image_pixels)
    try:
        source = pin(model)
    except Exception as exc:  # MLflow raises several types for an unknown name or alias
        raise fail(f"{model}: cannot resolve in the registry ({exc})") from None
    with record_session() as session:
        parts, skipped = archived_parts(session, images, start, end, station)
    if not parts:
        raise fail(f"no archived part with a stored image in the window (left out: {skipped or 'none'})")
    console.print(f"re-scoring {len(parts)} archived parts with {source.source} ({engine.value} engine)")
    info: dict = {"name": engine.value}
    try:
        if engine is EngineName.local:
            began = time.perf_counter()
            rescored, meta = rescore_local(source.source, parts, threads, max_pixels=images.max_pixels)
            seconds = time.perf_counter() - began
        else:
            rescored, meta = _on_ray(
                source.source, parts, address, num_cpus, actors, batch_size, threads, info
            )
            seconds = info["score_seconds"]  # the throughput is of the scoring, not of Ray starting
    except (*user_errors(), ValueError) as exc:
        raise fail(str(exc)) from None
    report = compare(
        parts,
        rescored,
        model={
            "uri": model,
            "name": source.name or meta.name,
            "version": source.version or f"sha-{meta.onnx_sha256[:12]}",
            "task": meta.task,
        },
        window={
            "since": start.isoformat() if start else None,
            "until": end.isoformat() if end else None,
            "station": station,
        },
        engine=info,
        seconds=seconds,
        skipped=skipped,
    )
    _print(report)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report.as_dict(), indent=2, default=str) + "\n")
        console.print(f"report: {out}")


def _on_ray(source, parts, address, num_cpus, actors, batch_size, threads, info: dict):
    """The Ray engine (the `[scale]` extra), with what it ran on recorded in `info`."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise fail("--engine ray needs Ray: pip install 'zerodefect[scale]'")
    from zerodefect.quality import rescore_ray
    from zerodefect.quality.rescore import load_engine
    from zerodefect.settings import get_settings

    meta = load_engine(source, 1).meta  # a bad bundle fails here, before Ray starts
    max_pixels = get_settings().record_max_image_pixels
    if not address:  # a local Ray: refuse too many actors before starting it
        rescore_ray.actor_count(num_cpus or os.cpu_count() or 1, actors)
    info["init_seconds"] = round(rescore_ray.start(address, num_cpus), 3)
    try:
        count = rescore_ray.actor_count(rescore_ray.cluster_cpus(), actors)
        info.update(address=address, num_cpus=num_cpus, actors=count, batch_size=batch_size)
        began = time.perf_counter()
        rescored = rescore_ray.rescore_ray(source, parts, count, batch_size, threads or 1, max_pixels)
        info["score_seconds"] = round(time.perf_counter() - began, 3)
    finally:
        rescore_ray.stop()
    return rescored, meta


def _print(report) -> None:
    bundle_errors, line_errors = report.reviewed_errors
    summary = Table("", "parts", title=f"re-score of {report.model['name']} v{report.model['version']}")
    rows = [
        ("re-scored", report.parts),
        ("agree with the line", report.agree),
        ("newly rejected", report.newly_rejected),
        ("newly passed", report.newly_passed),
        (f"reviewed escapes caught (of {report.escapes_reviewed})", report.escapes_caught),
        ("reviewed escapes still missed", report.escapes_still_missed),
        (f"new false rejects (of {report.reviewed_good} reviewed good)", report.false_rejects_new),
        (
            "reviewed false rejects fixed / kept",
            f"{report.false_rejects_fixed} / {report.false_rejects_kept}",
        ),
        (f"new escapes (of {report.confirmed_defects} confirmed defects)", report.new_escapes),
        ("errors on reviewed parts: bundle / line", f"{bundle_errors} / {line_errors}"),
    ]
    for name, value in rows:
        summary.add_row(name, str(value))
    console.print(summary)
    for title, groups in (("station", report.by_station), ("class", report.by_class)):
        table = Table(title, "parts", "disagree", "newly rejected", "newly passed", title=f"by {title}")
        for key, t in groups.items():
            table.add_row(
                escape(key), str(t.parts), str(t.disagree), str(t.newly_rejected), str(t.newly_passed)
            )
        console.print(table)
    for reason, count in report.unscored.items():
        console.print(f"[yellow]not re-scored: {count} ({escape(reason)})[/]")
    console.print(f"{report.parts_per_s:g} parts/s over {report.seconds:g} s")
