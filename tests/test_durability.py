"""Kill the edge with SIGKILL under load while the record is down: no accepted part is lost,
none is recorded twice, and a second station posting the same keys at the same time changes
nothing in the first one's record."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml
from sqlalchemy.orm import sessionmaker

from zerodefect.quality.db import make_engine, migrate, session_factory
from zerodefect.quality.store import add_station
from zerodefect.services import answers_healthz, free_port, start_zerodefect, wait_ready

from .bundles import REJECT_ALL, TRUSTED_KEY, make_bundle
from .people import add_user, logged_in
from .test_edge import png

CAMERA_KEY = "zd_durability_camera"


def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    wait_ready(proc, lambda: answers_healthz(url), url, log, timeout=60.0)


def post_until_killed(
    url: str,
    edge: subprocess.Popen,
    image: bytes,
    prefix: str,
    kill_after: int,
    frames: int,
    before_kill: Callable[[], None] | None = None,
) -> list[str]:
    """Four cameras post up to `frames` parts; once `kill_after` are answered, `before_kill`
    runs and the station is SIGKILLed mid-load. The keys of the answered parts."""
    answered: list[str] = []
    lock = threading.Lock()
    killed = threading.Event()

    def camera(i: int) -> None:
        if killed.is_set():
            return
        try:
            r = httpx.post(
                f"{url}/v1/inspect",
                files={"image": ("p.png", image, "image/png")},
                data={"serial": f"{prefix.upper()}-{i}", "station": "st-01", "frame_id": f"{prefix}{i}"},
                headers={"X-API-Key": CAMERA_KEY},
                timeout=10,
            )
        except httpx.HTTPError:
            return  # the station died under this request: never answered
        if r.status_code == 200:
            with lock:
                answered.append(r.json()["key"])
                if len(answered) == kill_after and not killed.is_set():
                    if before_kill is not None:
                        before_kill()
                    edge.send_signal(signal.SIGKILL)
                    killed.set()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(camera, range(frames)))
    edge.wait(10)
    assert edge.returncode == -signal.SIGKILL and killed.is_set()
    return answered


@dataclass
class Line:
    """A record (database made, station st-01 added) and a station config, both to be run as
    `zerodefect serve` processes with `env`; nothing is started yet."""

    env: dict[str, str]
    sessions: sessionmaker
    record_key: str
    record_url: str
    edge_url: str
    record_args: list[str]
    edge_args: list[str]
    log: Path


def line_in_processes(root: Path, env: dict[str, str] | None = None, **station: object) -> Line:
    """The station st-01 with a reject-all bundle, forwarding to a record under root/var;
    `station` adds keys to the station config."""
    env = {
        **os.environ,
        "ZD_DATA_DIR": str(root / "var"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'm.db'}",
        **(env or {}),
    }
    database = f"sqlite:///{root / 'var' / 'record.db'}"
    migrate(database)
    sessions = session_factory(make_engine(database))
    with sessions() as session:
        _, record_key = add_station(session, "st-01")
    env["ZD_RECORD_API_KEY"] = record_key
    record_port, edge_port = free_port(), free_port()
    record_url = f"http://127.0.0.1:{record_port}"
    config = root / "station.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "station": "st-01",
                "model": str(make_bundle(root / "bundle", REJECT_ALL)),
                "record_url": record_url,
                "api_key_hashes": [hashlib.sha256(CAMERA_KEY.encode()).hexdigest()],
                "trusted_keys": [TRUSTED_KEY],
                "outbox": str(root / "outbox.db"),
                **station,
            }
        )
    )
    return Line(
        env,
        sessions,
        record_key,
        record_url,
        f"http://127.0.0.1:{edge_port}",
        ["serve", "record", "--port", str(record_port)],
        ["serve", "edge", "--config", str(config), "--port", str(edge_port)],
        root / "services.log",
    )


def test_sigkill_under_load_with_the_record_down(tmp_path: Path) -> None:
    line = line_in_processes(tmp_path, store_images="none")
    env, log, edge_args = line.env, line.log, line.edge_args
    record_url, edge_url = line.record_url, line.edge_url
    with line.sessions() as session:
        _, intruder_key = add_station(session, "st-02")
    auditor = add_user(line.sessions, "auditor", "viewer")
    edge = start_zerodefect(edge_args, log, env)
    wait_healthy(edge_url, edge, log)

    accepted = post_until_killed(edge_url, edge, png(100), "k", 40, 400)
    assert len(accepted) >= 40

    # Station B posts A's keys with fake passes while A's outbox drains: each lands in B's own
    # record, and none is taken for A's reject.
    intruded: list[int] = []

    def intruder() -> None:
        with httpx.Client(base_url=record_url, headers={"X-API-Key": intruder_key}, timeout=10) as client:
            for i, key in enumerate(accepted):
                fake = {
                    "key": key,
                    "serial": f"K-{i}",
                    "captured_at": "2026-11-25T08:00:00+00:00",
                    "model_name": "fake",
                    "model_version": "1",
                    "threshold": 0.5,
                    "score": 0.0,
                    "verdict": "pass",
                }
                for _ in range(600):  # the record is starting: bounded retries while it is down
                    try:
                        intruded.append(client.post("/v1/inspections", json=fake).status_code)
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)

    edge = start_zerodefect(edge_args, log, env)
    record = start_zerodefect(line.record_args, log, env)
    colliding = threading.Thread(target=intruder)
    colliding.start()
    try:
        wait_healthy(edge_url, edge, log)
        wait_healthy(record_url, record, log)
        deadline = time.monotonic() + 60
        while httpx.get(f"{edge_url}/readyz").json()["outbox"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.1)
        outbox = httpx.get(f"{edge_url}/readyz").json()["outbox"]
        assert outbox["pending"] == 0 and outbox["dead"] == 0
        colliding.join(90)
        reader = logged_in(record_url, auditor)
        items = reader.get("/v1/inspections", params={"limit": 500, "station": "st-01"}).json()["items"]
        fakes = reader.get("/v1/inspections", params={"limit": 500, "station": "st-02"}).json()["items"]
        reader.close()
    finally:
        for proc in (edge, record):
            proc.terminate()
            proc.wait(10)
    assert intruded == [201] * len(accepted)
    assert sorted(f["key"] for f in fakes) == sorted(accepted) and {f["verdict"] for f in fakes} == {"pass"}
    # Every one of A's parts is A's reject (REJECT_ALL), whoever posted its key first.
    assert {item["verdict"] for item in items} == {"reject"}
    keys = [item["key"] for item in items]
    assert len(keys) == len(set(keys)), "a part was recorded twice"
    assert set(accepted) <= set(keys), f"lost {len(set(accepted) - set(keys))} accepted parts"
    # Parts written to the outbox whose answer the kill swallowed are recorded too, once.
    assert len(keys) == outbox["total"]
