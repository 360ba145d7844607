"""`make demo`: the main job on ELPV with embedded defaults (SQLite MLflow, local files)."""

from __future__ import annotations

import json
import os
import secrets
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zerodefect.apikeys import hash_key, mint_key
from zerodefect.formatting import fmt_rate
from zerodefect.services import free_port, start_zerodefect, stop_process, wait_ready
from zerodefect.settings import get_settings

if TYPE_CHECKING:
    from zerodefect.training.report import Report

RECORD_PORT = 8100
RECORD_TITLE = "zerodefect quality record"
# The demo's budget per part: this many times the model's batch-1 median measured on this
# machine just before the line starts, so a loaded 2-core box does not fail-safe most parts.
BUDGET_FACTOR = 20


def machine_budget(bundle: Path, manifest_path: Path, configured: float, threads: int) -> tuple[float, float]:
    """(budget_ms for this machine, the model median it came from): the configured budget, or
    BUDGET_FACTOR x the bundle's batch-1 median measured here (about 2 s) when that is longer."""
    from zerodefect.bench import model_only
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.preprocess import read_image

    manifest = Manifest.read(manifest_path)
    images = [read_image(manifest.resolve(s)) for s in manifest.split("test")[:16]]
    median = model_only(bundle, images, threads, seconds=2.0)["model_median_ms"]
    return max(configured, round(BUDGET_FACTOR * median)), median


def run_demo(
    config: Path,
    console: Console,
    station_config: Path = Path("configs/station.yaml"),
    rate: float = 1200.0,
    cameras: int = 2,
) -> None:
    """Import ELPV, train a short schedule, evaluate, register and promote; then run the line.

    The line: the record service (left running for reviewers), an edge station following the
    champion alias, and the simulator playing the test split through it.
    """
    from zerodefect.training.config import load_config
    from zerodefect.training.pipeline import run_training
    from zerodefect.training.registry import promote
    from zerodefect.training.report import ACCURACY_AT_05

    settings = get_settings()
    cfg = load_config(config)
    console.rule("zerodefect demo: ELPV solar cells")
    outcome = run_training(cfg, config, console=console)
    report = outcome.report
    json_path = outcome.report_path
    if outcome.model_name:
        gate = promote(outcome.model_name, outcome.version)
        status = "promoted to @champion" if gate.promoted else "kept as @challenger (gate failed)"
    else:
        status = "not registered"
    console.rule("demo results (test split)")
    data, plant = report.data, report.plant
    # The operating point first, as every report (training.report): the line runs there.
    console.print(
        f"threshold {plant.thresholds['threshold']:.4f} (val escape target {cfg.calibration.target_escape_rate}): "
        f"escape rate {fmt_rate(plant.escape_rate)} ({plant.escapes}/{plant.defective} defective), "
        f"false-reject rate {fmt_rate(plant.false_reject_rate)} ({plant.false_rejects}/{plant.good} good)\n"
        f"accuracy {fmt_rate(report.metric('accuracy'))} (at 0.5: {fmt_rate(data['at_threshold_0.5']['accuracy'])})  "
        f"AUROC {fmt_rate(report.metric('auroc'))}  F1 {fmt_rate(report.metric('f1'))}\n"
        f"why: {ACCURACY_AT_05}"
    )
    for key, groups in data.get("groups", {}).items():
        for name, g in groups.items():
            console.print(
                f"  {key}={name}: n={g['n']} accuracy {fmt_rate(g['accuracy'])} AUROC {fmt_rate(g['auroc'])} "
                f"escape {fmt_rate(g['escape_rate'])} false reject {fmt_rate(g['false_reject_rate'])}"
            )
    console.print(
        f"\nbundle:      {outcome.bundle_dir}\n"
        f"report:      {json_path}\n"
        f"plots:       {outcome.run_dir / 'eval'} (roc.png, pr.png, confusion.png)\n"
        f"MLflow:      {settings.tracking_uri}  run {outcome.run_id}\n"
        f"model:       models:/{outcome.model_name}@challenger = version {outcome.version}, {status}\n"
        f"browse runs: .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}"
    )
    if outcome.model_name:
        run_line(
            outcome.model_name,
            outcome.run_dir / "manifest.jsonl",
            report,
            station_config,
            rate,
            cameras,
            console,
            outcome.bundle_dir,
        )


def _record_answers(url: str) -> bool:
    try:
        response = httpx.get(f"{url}/openapi.json", timeout=2)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.json().get("info", {}).get("title") == RECORD_TITLE


def _port_free(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def start_record_service(port: int, console: Console) -> tuple[str, int | None]:
    """Start the record API in a background process that outlives the demo, or reuse ours.

    A record service this data directory started before (var/record.json) is reused; if the
    port is taken by anything else, a free port is used. Returns the URL and the new process id
    (None when an earlier one was reused).
    """
    settings = get_settings()
    state_file = settings.data_dir / "record.json"
    if state_file.is_file():
        state = json.loads(state_file.read_text())
        url = f"http://127.0.0.1:{state['port']}"
        if _pid_alive(state["pid"]) and _record_answers(url):
            console.print(f"reusing the record service at {url} (pid {state['pid']})")
            return url, None
    if not _port_free(port):
        port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = settings.data_dir / "logs" / "record.log"
    process = start_zerodefect(["serve", "record", "--port", str(port)], log)
    try:
        wait_ready(process, lambda: _record_answers(url), f"the record service on port {port}", log, 60)
    except RuntimeError:
        stop_process(process)
        raise
    state_file.write_text(json.dumps({"pid": process.pid, "port": port}))
    return url, process.pid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def station_key(name: str, line: str | None) -> str:
    """A fresh record API key for the demo's station (created on first use)."""
    from zerodefect.quality.db import record_session
    from zerodefect.quality.store import RecordError, add_station, rotate_station_key

    with record_session() as session:
        try:
            return add_station(session, name, line)[1]
        except RecordError:
            session.rollback()
            return rotate_station_key(session, name)


DEMO_USER = "demo-qa"


def demo_login() -> tuple[str, str]:
    """The demo's reviewer login, created on first use; its password is random and kept in
    var/demo-login.json (readable by this user only), never in the repository."""
    import json

    from sqlalchemy import select

    from zerodefect.quality.auth import create_user, set_password, verify_password
    from zerodefect.quality.db import record_session
    from zerodefect.quality.models import User

    saved = get_settings().data_dir / "demo-login.json"
    with record_session() as session:
        user = session.scalar(select(User).where(User.username == DEMO_USER))
        if saved.is_file() and user is not None:
            data = json.loads(saved.read_text())
            if verify_password(data["password"], user.password_hash):
                return data["username"], data["password"]
        # First demo, or the record or the file was reset: a fresh password for the demo user.
        password = secrets.token_urlsafe(12)
        if user is None:
            create_user(session, DEMO_USER, password, "reviewer")
        else:
            set_password(session, DEMO_USER, password)
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"username": DEMO_USER, "password": password}))
    saved.chmod(0o600)
    return DEMO_USER, password


def run_line(
    model_name: str,
    manifest_path: Path,
    report: Report,
    station_config: Path,
    rate: float,
    cameras: int,
    console: Console,
    bundle: Path | None = None,
) -> None:
    """Serve the champion at a station and play the test split through it at `rate` parts/minute;
    with `bundle` (the champion's), its budget suits this machine (machine_budget)."""
    from zerodefect.edge.app import create_app as create_edge
    from zerodefect.edge.config import load_station_config
    from zerodefect.edge.simulator import parts_from_manifest, play
    from zerodefect.inference.signing import public_key_b64, signing_key
    from zerodefect.services import serve_in_thread

    settings = get_settings()
    console.rule("the line: record service, edge station, simulator")
    record_url, pid = start_record_service(RECORD_PORT, console)
    camera_key = mint_key()
    cfg = load_station_config(
        station_config,
        {
            "model": f"models:/{model_name}@champion",
            "record_url": record_url,
            "api_key_hashes": [hash_key(camera_key)],
            # The station trusts the key this machine's training signed the champion with.
            "trusted_keys": [public_key_b64(signing_key())],
            "outbox": settings.data_dir / "edge" / "demo-outbox.db",
        },
    )
    if bundle is not None:
        configured = cfg.budget_ms
        budget, median = machine_budget(bundle, manifest_path, configured, cfg.threads or 2)
        cfg = cfg.model_copy(update={"budget_ms": budget})
        console.print(
            f"budget: {budget:g} ms per part (model median {median:.1f} ms measured here x {BUDGET_FACTOR}, "
            f"at least the config's {configured:g} ms)"
        )
    os.environ[cfg.record_api_key_env] = station_key(cfg.station, cfg.line)
    parts = parts_from_manifest(manifest_path, "test")
    batch = "DEMO-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with serve_in_thread(create_edge(cfg)) as edge_url, Progress(*columns, console=console) as bar:
        task = bar.add_task(f"line at {rate:g} parts/min, {cameras} cameras", total=len(parts))
        tally = play(
            parts,
            edge_url,
            camera_key,
            cfg.station,
            rate,
            cameras,
            batch,
            on_part=lambda _part, _body: bar.advance(task),
        )
        deadline = time.monotonic() + 120
        while httpx.get(f"{edge_url}/readyz").json()["outbox"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)  # the forwarder drains the outbox in the background
        served = httpx.get(f"{edge_url}/readyz").json()
    username, password = demo_login()
    with httpx.Client(base_url=record_url, timeout=30) as reader:
        reader.post("/v1/login", json={"username": username, "password": password}).raise_for_status()
        recorded = {
            verdict: reader.get(
                "/v1/inspections",
                params={"station": cfg.station, "batch": batch, "verdict": verdict, "limit": 1},
            ).json()["total"]
            for verdict in ("pass", "reject")
        }
    console.rule("line results (test split played through the station)")
    console.print(
        f"station {cfg.station} served {model_name} v{served['model_version']} "
        f"(threshold from the bundle), batch {batch}\n"
        f"verdicts: {dict(tally.verdicts)}  fail-safe: {tally.failsafe}  refused: {dict(tally.errors) or 0}\n"
        f"observed escape rate {fmt_rate(tally.escape_rate)} ({tally.escapes}/{tally.defective} defective passed); "
        f"offline evaluation {fmt_rate(report.escape_rate)}\n"
        f"observed false-reject rate {fmt_rate(tally.false_reject_rate)} "
        f"({tally.false_rejects}/{tally.good} good rejected); offline evaluation {fmt_rate(report.false_reject_rate)}\n"
        f"quality record: {recorded['pass']} pass + {recorded['reject']} reject rows for this batch; "
        f"outbox {served['outbox']}"
    )
    running = f"pid {pid}, stop with: kill {pid}" if pid else "started by an earlier demo"
    console.print(
        f"\nreview app:  {record_url}/review  (the flagged parts of this run; dashboard, alerts)\n"
        f"login:       {username} / {password}  (reviewer; kept in var/demo-login.json)\n"
        f"record API:  {record_url}/v1/inspections?batch={batch}  ({running})\n"
        f"OpenAPI:     {record_url}/docs\n"
        f"serve the station yourself: zerodefect serve edge --config {station_config}"
    )
