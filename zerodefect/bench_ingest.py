"""`zerodefect bench-ingest`: simulated stations post to one record on a durable PostgreSQL.

Everything is real but the cameras: a throw-away PostgreSQL cluster with fsync and synchronous
commit on (pgcluster durable=True), the record service in its own process (uvicorn, as
`zerodefect serve record` runs it), and in this process one durable outbox (edge.outbox) and one
forwarder thread (edge.forwarder) per simulated station, so a part travels the path it travels
in a plant: outbox -> forwarder -> HTTP -> one transaction per batch -> 2xx -> outbox settled.

Three measurements, in one run so their ratios hold on a shared machine:
- drain: every station starts with a backlog (the record was away) and the forwarders empty it
  in batches: the sustained batched rate, and the drain rate of a recovering plant;
- single: the same with one part per request (POST /v1/inspections): the single-row figure;
- live: the stations make parts at the plant's rate (50 x 30/s = 1,500/s), each written to its
  outbox as a station does, and the time from outbox to the record's answer is kept per part
  (the outbox's own `created` and `delivered` stamps): its p99.
Parts look like a station's: about 2% of passes (the sample) and every reject carry a JPEG.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from zerodefect.edge.forwarder import Forwarder
from zerodefect.edge.outbox import Outbox
from zerodefect.services import answers_healthz, free_port, start_zerodefect, stop_process, wait_ready

KEPT_LOG = Path("var/bench/ingest-record.log")
PLANT_STATIONS = 50
PLANT_FPS = 30.0
PLANT_RATE = PLANT_STATIONS * PLANT_FPS  # 1,500 parts/s
BACKLOG_MINUTES = 10.0
REJECT_RATE = 0.02
PASS_SAMPLE_RATE = 0.02  # edge.config pass_sample_rate's default


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process `pid` so far, from /proc (Linux)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree_cpu_seconds(pid: int) -> float:
    """CPU time of process `pid`, its children that exited and its children alive (PostgreSQL's
    postmaster and its backends), from /proc (Linux)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(f) for f in fields[11:15])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            child = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        if int(child[1]) == pid:
            total += int(child[11]) + int(child[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def _cpu(record_pid: int, postgres_pid: int, into: dict) -> Iterator[None]:
    """Add to `into` the CPU the record, PostgreSQL and this process (the simulated stations)
    used: the record's CPU per part is the figure that scales to a plant's server, and the sum
    against the machine's cores says whether a latency is the record's or a full machine's."""
    record, here = _cpu_seconds(record_pid), time.process_time()
    database = _tree_cpu_seconds(postgres_pid)
    yield
    into["record_cpu_s"] = round(_cpu_seconds(record_pid) - record, 2)
    into["postgres_cpu_s"] = round(_tree_cpu_seconds(postgres_pid) - database, 2)
    into["stations_cpu_s"] = round(time.process_time() - here, 2)
    into["record_cpu_ms_per_part"] = round(1000 * into["record_cpu_s"] / into["parts"], 3)


@dataclass
class Station:
    name: str
    key: str
    outbox: Outbox


def _images(count: int = 16) -> list[np.ndarray]:
    """A few textured 320x240 frames; each part's JPEG is one of them with its number stamped in."""
    rng = np.random.default_rng(0)
    return [
        cv2.GaussianBlur(rng.integers(0, 255, (240, 320), dtype=np.uint8), (9, 9), 3) for _ in range(count)
    ]


def _jpeg(frame: np.ndarray, n: int) -> str:
    """A JPEG (base64) of `frame` that no other part has: every part's photo is its own, so the
    record writes each one (identical bytes would be stored once)."""
    import base64

    image = frame.copy()
    image[:8, :32] = np.unpackbits(np.array([n], ">u4").view(np.uint8)).reshape(1, 32) * 255
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    assert ok
    return base64.b64encode(data.tobytes()).decode()


def _part(phase: str, station: str, n: int, images: list[np.ndarray]) -> dict:
    """Part n of a station in a phase of the bench: a reject every 1/REJECT_RATE parts, images on
    rejects and sampled passes."""
    reject = n % int(1 / REJECT_RATE) == 0
    body = {
        "key": f"{phase}-{station}-{n:09d}",
        "serial": f"{station}-S{n}",
        "camera": "cam0",
        "captured_at": datetime.now(UTC).isoformat(),
        "model_name": "bench",
        "model_version": "1",
        "threshold": 0.5,
        "score": 0.9 if reject else 0.1,
        "verdict": "reject" if reject else "pass",
        "latency_ms": 7.0,
        "image_stats": {"brightness": 120.0, "contrast": 30.0, "sharpness": 200.0},
    }
    if reject:
        body["defects"] = [{"class_name": "crack", "score": 0.9, "box": [10.0, 10.0, 60.0, 40.0]}]
    if reject or (n * 2654435761) % 10_000 < PASS_SAMPLE_RATE * 10_000:
        body.update(image_b64=_jpeg(images[n % len(images)], n), image_type="image/jpeg")
    return body


def _fill(phase: str, station: Station, count: int, images: list[np.ndarray]) -> None:
    """Put a backlog into a station's outbox in one transaction (the parts a station made while
    the record was away; how they got there is not what is measured)."""
    now = time.time()
    rows = [
        (p["key"], json.dumps(p), "{}", now)
        for p in (_part(phase, station.name, n, images) for n in range(count))
    ]
    with sqlite3.connect(station.outbox.path) as db:
        db.executemany("INSERT INTO outbox (key, payload, response, created) VALUES (?, ?, ?, ?)", rows)


def _forwarders(stations: list[Station], url: str, batch_size: int, batch_wait_ms: float) -> list[Forwarder]:
    return [
        Forwarder(s.outbox, url, s.key, batch_size=batch_size, batch_wait_ms=batch_wait_ms) for s in stations
    ]


def _wait_delivered(stations: list[Station], total: int, timeout: float) -> float:
    """Wait until `total` parts are delivered across the stations; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [s.outbox.counts() for s in stations]
        done, dead = sum(c["delivered"] for c in counts), sum(c["dead"] for c in counts)
        if dead:
            raise RuntimeError(f"the record refused {dead} bench parts; see the outboxes")
        if done >= total:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {total} parts delivered within {timeout:g} s")
        time.sleep(0.05)  # polling progress; the figures come from the outboxes' own stamps


def _reset(stations: list[Station]) -> None:
    """Empty the outboxes between measurements (the record keeps what it got)."""
    for s in stations:
        with sqlite3.connect(s.outbox.path) as db:
            db.execute("DELETE FROM outbox")


def drain(
    phase: str, stations: list[Station], url: str, per_station: int, batch_size: int, images: list[np.ndarray]
) -> dict:
    """Every station starts with `per_station` parts waiting; time until the record has them all."""
    _reset(stations)
    for s in stations:
        _fill(phase, s, per_station, images)
    forwarders = _forwarders(stations, url, batch_size, 50.0)
    start = time.monotonic()
    for f in forwarders:
        f.start()
    try:
        end = _wait_delivered(stations, per_station * len(stations), timeout=600)
    finally:
        for f in forwarders:
            f.stop()
    parts = per_station * len(stations)
    return {"parts": parts, "seconds": round(end - start, 2), "parts_per_s": round(parts / (end - start), 1)}


def live(
    stations: list[Station], url: str, rate: float, seconds: float, batch_wait_ms: float, images
) -> dict:
    """The stations make parts at `rate` in all for `seconds`, each put into its outbox as a
    station does (a durable write); the forwarders deliver them as they come. Latency per part:
    the outbox's `delivered` minus its `created` (taken after the record's 2xx, so after commit).

    The stations run in LIVE_PROCESSES processes of their own, as a plant's run on their own
    machines: 50 producers and 50 forwarders in one Python process queued on its interpreter
    lock, and that queue (not the record, at half a core) was most of the p99 measured so."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    _reset(stations)
    per_station = rate / len(stations)
    count = int(per_station * seconds)
    specs = [(i, s.name, s.key, str(s.outbox.path)) for i, s in enumerate(stations)]
    groups = [specs[g::LIVE_PROCESSES] for g in range(LIVE_PROCESSES)]
    begin = time.time() + 5.0  # every process imported and its forwarders started by then
    with ProcessPoolExecutor(len(groups), mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(_live_group, group, url, rate, per_station, count, batch_wait_ms, begin)
            for group in groups
        ]
        results = [f.result(timeout=seconds + 400) for f in futures]
    latencies = [ms for group_ms, _, _ in results for ms in group_ms]
    made = max(m for _, m, _ in results)
    ms = np.array(latencies)
    return {
        "parts": len(latencies),
        "offered_parts_per_s": round(len(latencies) / made, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "station_processes": len(groups),
        "stations_process_cpu_s": round(sum(cpu for _, _, cpu in results), 2),
    }


LIVE_PROCESSES = 5


def _live_group(
    specs: list[tuple[int, str, str, str]],
    url: str,
    rate: float,
    per_station: float,
    count: int,
    batch_wait_ms: float,
    begin: float,
) -> tuple[list[float], float, float]:
    """One process's share of the live run: its stations' outboxes, producers and forwarders.
    Returns the parts' outbox-to-commit latencies (ms), how long producing took, and the
    process's CPU seconds."""
    images = _images()
    stations = [Station(name, key, Outbox(Path(path))) for _, name, key, path in specs]
    forwarders = _forwarders(stations, url, 200, batch_wait_ms)
    for f in forwarders:
        f.start()

    def produce(index: int, s: Station) -> None:
        start = time.monotonic() + (begin - time.time()) + index / rate  # stations out of step
        for n in range(count):
            pause = start + n / per_station - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # the camera's frame clock
            payload = _part("live", s.name, n, images)
            s.outbox.put(payload["key"], payload, {})

    producers = [
        threading.Thread(target=produce, args=(i, s)) for (i, *_), s in zip(specs, stations, strict=True)
    ]
    for p in producers:
        p.start()
    for p in producers:
        p.join()
    made = time.time() - begin
    try:
        _wait_delivered(stations, count * len(stations), timeout=300)
    finally:
        for f in forwarders:
            f.stop()
    latencies = []
    for s in stations:
        with sqlite3.connect(s.outbox.path) as db:
            latencies += [row[0] * 1000 for row in db.execute("SELECT delivered - created FROM outbox")]
        s.outbox.close()
    return latencies, made, time.process_time()


def prune_all(db_url: str, image_root: Path) -> dict:
    """`record prune` over everything the bench stored (while nothing posts): the retention
    rate, to set against a plant day of 130 M parts."""
    from zerodefect.quality.db import make_engine, session_factory
    from zerodefect.quality.images import ImageStore
    from zerodefect.quality.retention import prune

    engine = make_engine(db_url)
    start = time.monotonic()
    report = prune(session_factory(engine), ImageStore(image_root), datetime.now(UTC))
    seconds = time.monotonic() - start
    engine.dispose()
    return {
        "parts": report.parts,
        "seconds": round(seconds, 2),
        "parts_per_s": round(report.parts / seconds, 1),
        "files_deleted": report.files_deleted,
    }


@contextmanager
def _record(
    root: Path, stations: int, andon: bool = True
) -> Iterator[tuple[str, list[tuple[str, str]], int, str, Path, int]]:
    """A durable PostgreSQL cluster with a migrated record and `stations` stations, served by
    `zerodefect serve record` in its own process: yields (url, [(name, key)], its pid, the
    database's URL, the record's image folder, the postmaster's pid)."""
    import os

    from zerodefect.pgcluster import postgres_cluster
    from zerodefect.quality.db import record_session
    from zerodefect.quality.store import add_station

    with postgres_cluster(durable=True) as cluster:
        db_url = cluster.create_database("record")
        keys = []
        with record_session(db_url) as session:
            for i in range(stations):
                station, key = add_station(session, f"bench-{i:02d}", line=f"line-{i % 5}")
                keys.append((station.name, key))
        port = free_port()
        env = dict(os.environ, ZD_RECORD_URL=db_url, ZD_DATA_DIR=str(root / "record"))
        if not andon:  # the andon evaluated once a day: the record's ingest cost alone
            (root / "andon.yaml").write_text("interval_seconds: 86400\n")
            env["ZD_ANDON_CONFIG"] = str(root / "andon.yaml")
        log = root / "record.log"
        proc = start_zerodefect(["serve", "record", "--port", str(port)], log, env)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(proc, lambda: answers_healthz(url), "the record", log)
            postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
            yield url, keys, proc.pid, db_url, root / "record" / "images", postmaster
        finally:
            stop_process(proc)
            KEPT_LOG.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, KEPT_LOG)  # the temp dir goes; what the record said stays


def run_ingest_bench(
    stations: int = PLANT_STATIONS,
    backlog_per_station: int = 600,
    single_per_station: int = 60,
    live_seconds: float = 20.0,
    batch_size: int = 200,
    batch_wait_ms: float = 50.0,
    andon: bool = True,
) -> dict:
    """All three measurements on one record; returns the figures (docs/results/ingest-bench.json)."""
    images = _images()
    with tempfile.TemporaryDirectory(prefix="zd-ingest-") as tmp:
        root = Path(tmp)
        with _record(root, stations, andon) as (url, keys, pid, db_url, image_root, postmaster):
            fleet = [Station(name, key, Outbox(root / "outboxes" / f"{name}.db")) for name, key in keys]
            batched, single, plant = {}, {}, {}
            with _cpu(pid, postmaster, batched):
                batched.update(drain("drain", fleet, url, backlog_per_station, batch_size, images))
            with _cpu(pid, postmaster, single):
                single.update(drain("single", fleet, url, single_per_station, 1, images))
            with _cpu(pid, postmaster, plant):
                plant.update(live(fleet, url, PLANT_RATE, live_seconds, batch_wait_ms, images))
            for s in fleet:
                s.outbox.close()
            pruned = prune_all(db_url, image_root)
    rate = batched["parts_per_s"]
    backlog = PLANT_RATE * BACKLOG_MINUTES * 60
    # While it drains, the plant keeps making parts: the backlog shrinks at rate - 1,500/s.
    catching_up = rate - PLANT_RATE
    return {
        "batched_parts_per_s": rate,
        "single_row_parts_per_s": single["parts_per_s"],
        "batch_speedup": round(rate / single["parts_per_s"], 1),
        "p99_commit_ms_at_1500": plant["p99_ms"],
        "backlog_drain_minutes": round(backlog / catching_up / 60, 1) if catching_up > 0 else None,
        "backlog_drain_minutes_if_stopped": round(backlog / rate / 60, 1),
        "backlog_parts": int(backlog),
        # What one core of the record's server takes, from the record's own CPU time per part.
        "record_parts_per_cpu_s_batched": round(1000 / batched["record_cpu_ms_per_part"]),
        "record_parts_per_cpu_s_single": round(1000 / single["record_cpu_ms_per_part"]),
        "prune_parts_per_s": pruned["parts_per_s"],
        "drain": batched,
        "prune": pruned,
        "single": single,
        "live": plant,
        "setup": {
            "stations": stations,
            "batch_size": batch_size,
            "batch_wait_ms": batch_wait_ms,
            "postgresql": "throw-away cluster, fsync and synchronous_commit on (pgcluster durable=True)",
            "record": "zerodefect serve record (one uvicorn process), same machine",
            "andon": "every 10 s (its default)" if andon else "off (evaluated once a day)",
            "images": f"JPEG 320x240 on rejects ({REJECT_RATE:.0%}) and sampled passes ({PASS_SAMPLE_RATE:.0%})",
        },
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
