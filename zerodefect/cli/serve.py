"""`zerodefect serve / demo / simulate`: run the station and the record, and play a line to them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from zerodefect.cli.root import app, console, fail, user_errors

serve_app = typer.Typer(
    help="Run the services: the station (edge) and the quality record.", no_args_is_help=True
)


@app.command()
def demo(
    config: Annotated[Path, typer.Option(help="Demo training config.")] = Path("configs/elpv-demo.yaml"),
    station: Annotated[Path, typer.Option(help="Station config the line runs.")] = Path(
        "configs/station.yaml"
    ),
    rate: Annotated[float, typer.Option(help="Line speed of the simulator, parts per minute.")] = 1200.0,
    cameras: Annotated[int, typer.Option(help="Concurrent cameras in the simulator.")] = 2,
) -> None:
    """The main job on ELPV, end to end.

    Import, train a short schedule, evaluate, export, register and promote; then start the quality
    record (left running), serve the champion at an edge station and play the test split through
    it with the line simulator, printing verdicts, observed escape and false-reject rates, and the
    record API's URL.
    """
    from zerodefect.demo import run_demo
    from zerodefect.training.health import TrainingFailed

    try:
        run_demo(config, console, station, rate, cameras)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    except TrainingFailed as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(code=3) from None


@serve_app.command("record")
def serve_record(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8100,
) -> None:
    """Serve the quality record API (database from ZD_RECORD_URL, default SQLite in var/)."""
    import uvicorn

    from zerodefect.quality.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="info")


@serve_app.command("edge")
def serve_edge(
    config: Annotated[Path, typer.Option(help="Station config YAML, e.g. configs/station.yaml.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8200,
    model: Annotated[
        str | None, typer.Option(help="Override the config's model (path or models:/NAME@ALIAS).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Pull mode: a video file, image folder, rtsp:// or http:// stream, or a USB device number."
        ),
    ] = None,
    serial_prefix: Annotated[
        str, typer.Option(help="Pull mode: serials are PREFIX-<frame number>.")
    ] = "PART",
) -> None:
    """Serve a station: POST /v1/inspect, /healthz, /readyz, /metrics, and the OpenAPI description at /docs.

    With --source, frames are also pulled from a camera or file and judged as they come.
    """
    import uvicorn

    from zerodefect.edge.app import create_app
    from zerodefect.edge.config import StationConfigError, load_station_config

    try:
        cfg = load_station_config(config, {"model": model} if model else None)
    except StationConfigError as exc:
        raise fail(str(exc)) from None
    app = create_app(cfg, source, serial_prefix)
    # No access log: a line per part (15 fps a camera) cost 2-3 % of the station's Python time,
    # and every part is in the outbox and the record already (docs/profiles/station-overhead.md).
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="The edge service, e.g. http://127.0.0.1:8200.")],
    station: Annotated[str, typer.Option(help="Station name the edge serves.")],
    api_key: Annotated[
        str, typer.Option(envvar="ZD_EDGE_API_KEY", help="Edge API key (or ZD_EDGE_API_KEY).")
    ],
    folder: Annotated[Path | None, typer.Option(help="Play every image in this folder.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Play a manifest split (labels give escape rates).")
    ] = None,
    split: Annotated[str, typer.Option(help="Manifest split to play.")] = "test",
    rate: Annotated[float, typer.Option(help="Parts per minute (0: as fast as the station answers).")] = 600,
    cameras: Annotated[int, typer.Option(help="Concurrent cameras.")] = 1,
) -> None:
    """Play images to a station at the line's rate and report verdicts, escapes and false rejects."""
    from zerodefect.edge.simulator import parts_from_folder, parts_from_manifest, play

    if (folder is None) == (manifest is None):
        raise fail("give exactly one of --folder or --manifest")
    try:
        parts = parts_from_folder(folder) if folder else parts_from_manifest(manifest, split)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    tally = play(parts, url.rstrip("/"), api_key, station, rate or None, cameras)
    _print_tally(tally)


def _print_tally(tally) -> None:
    console.print(
        f"verdicts: {dict(tally.verdicts)}  fail-safe: {tally.failsafe}  model versions: {dict(tally.versions)}"
    )
    if tally.escape_rate is not None:
        console.print(
            f"observed escape rate {tally.escape_rate:.4f} ({tally.escapes}/{tally.defective} defective passed)"
        )
    if tally.false_reject_rate is not None:
        console.print(
            f"observed false-reject rate {tally.false_reject_rate:.4f} ({tally.false_rejects}/{tally.good} good rejected)"
        )
    if tally.errors:
        console.print(f"[red]refused: {dict(tally.errors)}[/]")


@serve_app.command("mlflow")
def serve_mlflow(
    backend_store_uri: Annotated[
        str | None,
        typer.Option(
            help="Runs and registry: postgresql+psycopg://USER@HOST/mlflow in a plant "
            "(default: the data dir's SQLite store, var/mlflow.db)."
        ),
    ] = None,
    artifacts_destination: Annotated[
        str | None,
        typer.Option(
            help="Where the server keeps bundles and plots (a folder or s3://...; default var/mlartifacts)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on (0.0.0.0 for the plant network).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 5000,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
    allowed_hosts: Annotated[
        str | None,
        typer.Option(help="Host names clients use beyond loopback, e.g. mlflow.plant.local,10.0.0.5:5000."),
    ] = None,
) -> None:
    """Run the plant's central MLflow tracking server (runs, registry, artifacts) with `mlflow server`.

    Artifacts are proxied by the server (mlflow-artifacts:/), so training machines and stations
    need only its URL in MLFLOW_TRACKING_URI, never the artifact store's credentials or paths.
    """
    import os

    from zerodefect.mlflow_server import server_command

    command = server_command(backend_store_uri, artifacts_destination, host, port, workers, allowed_hosts)
    console.print(f"MLflow server on http://{host}:{port}: {' '.join(command[3:])}", soft_wrap=True)
    # Replaced, not wrapped: a supervisor (systemd, the tests) stops the server by this pid.
    os.execv(command[0], command)
