"""The library functions behind the thin CLI: import dispatch, bench run and bundle choice,
and starting a service in its own process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from zerodefect.bench import newest_finished_run, select_bundle
from zerodefect.cli import app
from zerodefect.datasets.importers import import_dataset
from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.services import start_zerodefect, wait_ready

from .bundles import PASS_ALL, make_bundle


def test_import_dispatch_names_the_format_and_what_it_needs(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown format 'nope'; choose one of folders, elpv"):
        import_dataset("nope", tmp_path)
    with pytest.raises(DatasetError, match="format coco needs a SOURCE"):
        import_dataset("coco")
    answer = CliRunner().invoke(app, ["datasets", "import", "yolo"])
    assert answer.exit_code == 2 and "format yolo needs a SOURCE folder or file" in answer.output


def test_bench_measures_the_newest_finished_run_and_its_own_bundle(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert newest_finished_run(runs, "line") is None
    finished, unfinished = runs / "line" / "20260101-000000", runs / "line" / "20260102-000000"
    unfinished.mkdir(parents=True)  # still training: no summary.json yet
    make_bundle(finished / "bundle", PASS_ALL, size=32)
    (finished / "summary.json").write_text(json.dumps({}))
    assert newest_finished_run(runs, "line") == finished
    # A single-view bundle is served as it is when the INT8 copy is not asked for.
    assert (
        select_bundle(finished, Manifest("classification", ["good", "crack"], []), int8=False)
        == finished / "bundle"
    )


def test_a_service_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "edge.log"
    proc = start_zerodefect(["serve", "edge", "--config", str(tmp_path / "missing.yaml")], log)
    with pytest.raises(RuntimeError, match=f"the station exited with 2; see {log}"):
        wait_ready(proc, lambda: False, "the station", log, timeout=60)
    assert "missing.yaml: cannot read" in log.read_text()


def test_new_key_prints_a_key_and_the_digest_a_station_config_lists() -> None:
    from zerodefect.apikeys import hash_key

    first = CliRunner().invoke(app, ["new-key"]).output.split()
    second = CliRunner().invoke(app, ["new-key"]).output.split()
    assert first[0].startswith("zd_") and len(first[0]) == 46 and first[0] != second[0]
    assert first[1] == hash_key(first[0]) and len(first[1]) == 64


def test_the_demo_starts_its_record_once_and_then_reuses_it(data_dir: Path) -> None:
    import io
    import os
    import signal

    import httpx
    from rich.console import Console

    from zerodefect.demo import start_record_service
    from zerodefect.services import free_port

    quiet = Console(file=io.StringIO())
    url, pid = start_record_service(free_port(), quiet)
    assert pid is not None
    try:
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        assert start_record_service(free_port(), quiet) == (url, None)  # reused, not a second one
        assert json.loads((data_dir / "record.json").read_text())["pid"] == pid
    finally:
        os.killpg(pid, signal.SIGTERM)


def test_every_command_keeps_its_name_after_the_split_into_modules() -> None:
    """Scripts, the Makefile and the README call these; the package must offer each one."""
    import typer

    root = typer.main.get_command(app)
    paths = set()
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None)
        paths |= {f"{name} {sub}" for sub in subcommands} if subcommands else {name}
    assert paths == {
        "train", "export", "evaluate", "quantize", "demo", "simulate", "new-key", "bench",
        "bench-eager-server", "datasets import", "datasets from-reviews", "datasets validate", "datasets inspect",
        "models list", "models promote", "serve record", "serve edge", "record add-station",
        "record rotate-key", "users create", "keys new", "keys sign", "rescore",
        "bench-ingest", "record prune",
        "models rollback", "serve mlflow", "fleet status",
    }  # fmt: skip
