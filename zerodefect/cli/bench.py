"""`zerodefect bench`: measure the station service against raw ONNX Runtime and eager PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zerodefect.cli.root import app, console, fail
from zerodefect.settings import get_settings


def _reference_run(name: str) -> Path:
    from zerodefect.bench import newest_finished_run

    run_dir = newest_finished_run(get_settings().data_dir / "runs", name)
    if run_dir is None:
        raise fail(f"no finished run of {name!r} under {get_settings().data_dir / 'runs'}; train it first")
    return run_dir


@app.command()
def bench(
    run: Annotated[
        str,
        typer.Option(
            help="Training run name whose newest finished run is measured ('' to skip the classifier "
            "rows and keep the other rows of the last report)."
        ),
    ] = "elpv-classifier",
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Bundle to serve (default: the run's own, or its single-view export when it has "
            "test-time augmentation, then its INT8 copy unless --no-int8)."
        ),
    ] = None,
    int8: Annotated[
        bool, typer.Option(help="Measure the run's static INT8 copy (made if missing); --no-int8 for fp32.")
    ] = True,
    seconds: Annotated[float, typer.Option(help="Seconds per load level.")] = 10.0,
    threads: Annotated[int, typer.Option(help="ONNX Runtime / torch threads (the station's cores).")] = 2,
    docs: Annotated[Path, typer.Option(help="Where benchmarks.md and results/edge-bench.json go.")] = Path(
        "docs"
    ),
    detector_run: Annotated[
        str,
        typer.Option(
            help="Detector training run whose newest finished bundle adds detector rows ('' to skip)."
        ),
    ] = "neu-det-detector",
    anomaly_run: Annotated[
        str,
        typer.Option(
            help="Anomaly training run whose newest finished bundle adds anomaly rows; without one, a "
            "stand-in trained on generated parts by --anomaly-config ('' to skip)."
        ),
    ] = "kolektorsdd-anomaly",
    anomaly_config: Annotated[
        Path,
        typer.Option(
            help="The stand-in anomaly run's config: its model section (input size, bank share) is "
            "fitted on generated parts of KolektorSDD's shape, once (minutes), then reused."
        ),
    ] = Path("configs/kolektorsdd-anomaly.yaml"),
    plc: Annotated[
        bool,
        typer.Option(
            help="With --run: the PLC rows, the same bundle's verdicts timed to a simulated PLC over OPC UA "
            "and Modbus TCP at 2 cameras x 15 fps (--no-plc keeps the last report's)."
        ),
    ] = True,
    edge_size: Annotated[
        bool,
        typer.Option(
            help="With --run: the size of a fresh `pip install .[edge]` (about a minute; pip needs its "
            "package index or cache)."
        ),
    ] = True,
) -> None:
    """Measure the station service against raw ONNX Runtime and an eager-PyTorch handler, in one run.

    When a finished detector run exists, its bundle is measured too, on its own test images; so
    is an anomaly run's, or a stand-in's trained on generated parts. With --run, the PLC rows
    time the classifier's verdicts to simulated PLCs (docs/results/plc-bench.json)."""
    import json
    import subprocess

    from zerodefect.bench import (
        heatmap_png,
        measure_run,
        newest_finished_run,
        run_bench,
        select_bundle,
        standin_anomaly_run,
        write_reports,
    )
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.preprocess import read_image

    data_dir = get_settings().data_dir
    last_path = docs / "results" / "edge-bench.json"
    last = json.loads(last_path.read_text()) if last_path.is_file() else {}
    skipped = "" if detector_run else " --detector-run ''"
    command = (
        f"make bench BENCH_ARGS=\"--run ''{skipped}\"  # zerodefect bench --run ''{skipped} "
        f"--seconds {seconds:g} --threads {threads}"
    )
    if run:
        run_dir = _reference_run(run)
        manifest = Manifest.read(run_dir / "manifest.jsonl")
        images = [read_image(manifest.resolve(s)) for s in manifest.split("test")[:64]]
        if bundle is None:
            bundle = select_bundle(run_dir, manifest, int8, console)
        command = (
            f"make bench  # zerodefect bench --run {run} {'--int8' if int8 else '--no-int8'} "
            f"--seconds {seconds:g} --threads {threads}, which measured {bundle}"
            + ("; PLC rows: --plc" if plc else "")
        )
        result = run_bench(
            bundle, run_dir, images, data_dir, threads, seconds, command=command, plc=plc, console=console
        )
        if not plc and "plc" in last:
            result["plc"] = last["plc"]  # with the command that measured it
        if edge_size:
            from zerodefect.bench import edge_install_mb

            try:
                result["edge_install_mb"] = edge_install_mb(Path.cwd(), data_dir / "bench-work")
            except (OSError, subprocess.CalledProcessError) as exc:
                console.print(f"the edge install size not measured: {exc}", markup=False)
    else:
        # Only the other rows are measured: the last report's classifier rows stay, with the
        # command that made them, and each section measured here names its own.
        result = last
    measured: list[str] = ["plc"] if run and plc else []
    if detector_run:
        det_dir = newest_finished_run(data_dir / "runs", detector_run)
        if det_dir is None:
            console.print(f"no finished {detector_run} run: detector rows skipped")
        else:
            command += f"; detector rows: --detector-run {detector_run}"
            result["detector"] = measure_run(det_dir, data_dir, threads, seconds)
            measured.append("detector")
    if anomaly_run:
        found = newest_finished_run(data_dir / "runs", anomaly_run)
        anomaly_dir = found or standin_anomaly_run(anomaly_config, data_dir, console)
        command += f"; anomaly rows: --anomaly-run {anomaly_run}" + (
            "" if found else f" (none finished: a stand-in by --anomaly-config {anomaly_config})"
        )
        result["anomaly"] = {
            **measure_run(anomaly_dir, data_dir, threads, seconds),
            **heatmap_png(anomaly_dir),
            "standin": found is None,
        }
        measured.append("anomaly")
    if run:
        result["command"] = command
    for section in measured:
        result[section]["command"] = command
    md, js = write_reports(result, docs)
    console.print(md.read_text(), markup=False)  # "[edge]" is text, not a style
    console.print(f"written: {md}, {js}")


@app.command("bench-eager-server", hidden=True)
def bench_eager_server(run_dir: Path, port: int = 8300, threads: int = 2, tta: str = "none") -> None:
    """Serve the eager-PyTorch baseline of `zerodefect bench` (C)."""
    import uvicorn

    from zerodefect.bench import eager_app

    uvicorn.run(eager_app(run_dir, threads, tta), host="127.0.0.1", port=port, log_level="warning")
