"""`zerodefect fleet`: every station of the plant, as the quality record sees it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zerodefect.cli.root import console

fleet_app = typer.Typer(help="The plant's stations: models, backlogs, health.", no_args_is_help=True)

COLOURS = {"ok": "green", "degraded": "yellow", "stale": "red", "silent": "dim"}


@fleet_app.command("status")
def fleet_status_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (one object per station).")] = False,
) -> None:
    """List every station: its model version, last part, outbox backlog, links and health.

    Read from the quality record (ZD_RECORD_URL): stations report their model and backlog
    every status_seconds (station config), and their parts and links as they go. Exit code 1
    when any station is not ok, for scripts and monitoring.
    """
    from zerodefect.quality.db import record_session
    from zerodefect.quality.fleet import fleet_status

    now = datetime.now(UTC)
    with record_session() as session:
        rows = fleet_status(session, now)
    if as_json:
        console.print_json(json.dumps([row.model_dump(mode="json") for row in rows]))
    else:
        table = Table()
        for name in ("line", "station", "model", "shadow", "last part", "backlog", "dead", "health"):
            table.add_column(name, no_wrap=True)  # names and numbers stay whole; the reasons wrap
        table.add_column("why")
        for row in rows:
            colour = COLOURS.get(row.health, "white")
            table.add_row(
                row.line or "-",
                row.station,
                f"{row.model_name} v{row.model_version}" if row.model_version else "-",
                row.shadow_version or "-",
                _ago(row.last_part_at, now),
                "-" if row.outbox_pending is None else str(row.outbox_pending),
                "-" if row.outbox_dead is None else str(row.outbox_dead),
                f"[{colour}]{row.health}[/]",
                escape("; ".join(row.reasons)),
            )
        console.print(table)
    if any(row.health != "ok" for row in rows):
        raise typer.Exit(code=1)


def _ago(when: datetime | None, now: datetime) -> str:
    if when is None:
        return "never"
    seconds = max((now - when).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"
