"""`zerodefect models`: registered model versions, their aliases, and the promotion gate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from zerodefect.cli.root import console, fail, user_errors
from zerodefect.formatting import fmt_rate

models_app = typer.Typer(help="Registered model versions and their aliases (MLflow).", no_args_is_help=True)


@models_app.command("list")
def models_list(
    name: Annotated[str | None, typer.Argument(help="Registered model name (default: every model).")] = None,
) -> None:
    """Without NAME: every registered model, its newest versions and aliases. With NAME: its
    versions with their aliases and test metrics."""
    from zerodefect.inference.registry import UnknownModel, list_models, list_versions

    if name is None:
        models = list_models()
        if not models:
            console.print("no registered models yet (zerodefect train registers one)")
            return
        table = Table("model", "versions", "latest", "aliases", title="registered models")
        for m in models:
            aliases = ", ".join(f"@{alias} v{version}" for alias, version in m.aliases.items())
            table.add_row(m.name, str(m.versions), ", ".join(f"v{v}" for v in m.latest), aliases or "-")
        console.print(table)
        return
    try:
        versions = list_versions(name)
    except UnknownModel as exc:
        raise fail(str(exc)) from None
    table = Table("version", "aliases", "test AUROC / mAP@0.5", "test escape", "run", title=name)
    for v in versions:
        table.add_row(
            v.version,
            ", ".join(v.aliases),
            v.tags.get("test_auroc", v.tags.get("test_map50", "-")),
            v.tags.get("test_escape_rate", "-"),
            v.run_id or "-",
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Version to promote (default: @challenger).")] = None,
    force: Annotated[
        bool,
        typer.Option(help="Promote even if the gate fails; needs --reason (kept in MLflow and the record)."),
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why a --force promotion must happen.")] = None,
    tolerance: Annotated[float, typer.Option(help="Allowed worsening per gate metric.")] = 0.005,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest for the gate (default: the challenger's).")
    ] = None,
    evidence: Annotated[
        Path | None,
        typer.Option(
            help="A `zerodefect rescore --out` report of this version: its errors on reviewed parts."
        ),
    ] = None,
    canary: Annotated[
        str | None,
        typer.Option(help="A line or station name: move only @champion-CANARY; its stations serve it first."),
    ] = None,
) -> None:
    """Move @champion to the challenger if it passes the gate on the test split.

    The gate needs both: the absolute floors of the config's `gate:` section (defaults: AUROC
    >= 0.75 or mAP@0.5 >= 0.30, escape rate <= 0.20, false-reject rate <= 0.50 at the
    calibrated threshold), which hold even when there is no champion; and, when a champion
    exists, no metric worse than the champion's by more than --tolerance on the same split.
    With --evidence, also its error rate on the record's reviewed parts no worse than the
    line's (by --tolerance). Every promotion is written to the quality record (GET /v1/model-promotions).
    With --canary L2, only the stations of line (or station) L2 move; promoting without --canary
    then moves every station and ends that version's canaries.
    """
    from zerodefect.settings import configure_mlflow
    from zerodefect.training.registry import promote

    configure_mlflow()
    try:
        result = promote(
            name, version, force, tolerance, manifest, reason=reason, evidence=evidence, canary=canary
        )
    except (*user_errors(), ValueError) as exc:
        raise fail(str(exc)) from None
    _print_gate(name, result)
    if not result.promoted:
        raise typer.Exit(code=1)


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    canary: Annotated[
        str | None, typer.Option(help="End the canary of this line or station instead (@champion-CANARY).")
    ] = None,
    reason: Annotated[str | None, typer.Option(help="Why; kept in the record's promotions.")] = None,
) -> None:
    """Move @champion back to the version it held before; stations follow at their next poll.

    No gate: the previous version already served. Each rollback steps back once more. With
    --canary, the canary alias is removed and its stations follow @champion again.
    """
    from zerodefect.settings import configure_mlflow
    from zerodefect.training.registry import rollback

    configure_mlflow()
    try:
        result = rollback(name, canary, reason)
    except ValueError as exc:
        raise fail(str(exc)) from None
    to = f"v{result.to_version}" if result.to_version else "no version"
    console.print(f"{name} @{result.alias}: v{result.from_version} -> {to}", soft_wrap=True)
    if not result.recorded:
        console.print("[red]the rollback was not written to the quality record (see the log)[/]")


def _print_gate(name: str, result) -> None:
    table = Table(
        "metric",
        f"challenger v{result.challenger}",
        f"champion {'v' + result.champion if result.champion else '(none)'}",
        "floor",
        "ok",
        "note",
        title=f"promotion gate ({result.split} split of {result.manifest})",
    )
    for row in result.rows:
        table.add_row(
            row.metric,
            fmt_rate(row.challenger),
            fmt_rate(row.champion),
            "-" if row.floor is None else f"{'>=' if row.higher_is_better else '<='} {row.floor:g}",
            "yes" if row.ok else "[red]no[/]",
            row.note,
        )
    console.print(table)
    if result.promoted:
        how = (
            f"[yellow]FORCED over a failed gate: {escape(result.reason or '')}[/]"
            if result.forced
            else "gate passed"
        )
        console.print(f"{name} v{result.challenger} is now @{result.alias} ({how})", soft_wrap=True)
        if not result.recorded:
            console.print("[red]the promotion was not written to the quality record (see the log)[/]")
    else:
        why = "; ".join(f"{r.metric} {r.note}" for r in result.failures)
        console.print(f"[red]{name} v{result.challenger} not promoted: {escape(why)}[/]", soft_wrap=True)
