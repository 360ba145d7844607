"""Memory under attack, measured by hand: python -m tests.probe_memory

Starts the station and the record as real processes (as `zerodefect serve` runs them), lets a
few good parts through so both have served, takes each one's idle RSS, then sends 100 of each
kind of bomb (tests/corpus.py) to the station's upload and to the record's store, asks the
record 100 times for the overlay of an image stored before it checked images (a bomb planted
in its image store), and streams a 200 MB chunked body to the record's login and store and to
the station's upload. Peak RSS is the kernel's high-water mark (VmHWM, reset once idle is
taken) and a 10 ms sampler of VmRSS. Writes docs/results/robustness-memory.json; the target is
a peak within 2x idle for each service. Linux only (/proc).
"""

from __future__ import annotations

import base64
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx

from zerodefect.services import start_zerodefect

from .corpus import bombs
from .people import add_user, logged_in
from .test_durability import CAMERA_KEY, line_in_processes, wait_healthy
from .test_edge import png

MB = 1024 * 1024
PER_KIND = 100
STREAM_BYTES = 200 * MB
OUT = Path("docs/results/robustness-memory.json")


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for {pid}")


class Sampler(threading.Thread):
    """Samples VmRSS of the processes every 10 ms; the high-water mark catches what it misses."""

    def __init__(self, pids: dict[str, int]):
        super().__init__(daemon=True)
        self.pids, self.peak = pids, dict.fromkeys(pids, 0.0)
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.01):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], status_mb(pid, "VmRSS"))


def stream(total: int, head: bytes = b"", chunk: int = 64 * 1024):
    yield head
    for _ in range(total // chunk):
        yield b"0" * chunk


def part(key: str, data: bytes, declared: str) -> dict:
    return {
        "key": key,
        "serial": key,
        "captured_at": datetime.now(UTC).isoformat(),
        "model_name": "probe",
        "model_version": "1",
        "threshold": 0.5,
        "score": 0.9,
        "verdict": "reject",
        "image_b64": base64.b64encode(data).decode(),
        "image_type": declared,
        "defects": [{"class_name": "crack", "score": 0.9, "box": [1, 1, 10, 10]}],
    }


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="zd-probe-"))
    line = line_in_processes(
        root,
        # As `make` runs the services (Makefile): freed memory is kept, so peaks show in RSS.
        {"MALLOC_MMAP_THRESHOLD_": "2000000000", "MALLOC_TRIM_THRESHOLD_": "2000000000"},
    )
    record_key, record_url, edge_url, log = line.record_key, line.record_url, line.edge_url, line.log
    viewer = add_user(line.sessions, "probe-viewer", "viewer")
    record = start_zerodefect(line.record_args, log, line.env)
    edge = start_zerodefect(line.edge_args, log, line.env)
    camera = {"X-API-Key": CAMERA_KEY}
    station = {"X-API-Key": record_key}
    answers: dict[str, Counter] = {}
    try:
        wait_healthy(record_url, record, log)
        wait_healthy(edge_url, edge, log)
        started = {"edge": status_mb(edge.pid, "VmRSS"), "record": status_mb(record.pid, "VmRSS")}
        # Warm up: good parts judged, forwarded with their images, overlays drawn.
        for i in range(20):
            r = httpx.post(
                f"{edge_url}/v1/inspect",
                files={"image": ("p.png", png(40 + i), "image/png")},
                data={"serial": f"W-{i}", "station": "st-01", "frame_id": f"w{i}"},
                headers=camera,
                timeout=30,
            )
            r.raise_for_status()
        deadline = time.monotonic() + 60
        while httpx.get(f"{edge_url}/readyz").json()["outbox"]["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        for i in range(5):  # parts with boxes, so the record draws overlays
            body = part(f"k-warm-{i:04d}", png(100 + i), "image/png")
            httpx.post(f"{record_url}/v1/inspections", json=body, headers=station).raise_for_status()
        reader = logged_in(record_url, viewer)
        items = [
            i for i in reader.get("/v1/inspections", params={"limit": 50}).json()["items"] if i["overlay_url"]
        ]
        for item in items:
            reader.get(item["overlay_url"]).raise_for_status()
        time.sleep(2)  # settle: idle is what the services hold between requests
        pids = {"edge": edge.pid, "record": record.pid}
        idle = {name: status_mb(pid, "VmRSS") for name, pid in pids.items()}
        for pid in pids.values():
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        sampler = Sampler(pids)
        sampler.start()

        client = httpx.Client(timeout=60)  # one client: a new one per request costs 30 ms of TLS set-up

        def send(target: str, kind: str, i: int, data: bytes, declared: str) -> int:
            if target == "edge":
                r = client.post(
                    f"{edge_url}/v1/inspect",
                    files={"image": ("p", data, declared)},
                    data={"serial": f"B-{kind}-{i}", "station": "st-01", "frame_id": f"{kind}-{i}"},
                    headers=camera,
                )
            else:
                body = part(f"k-{kind}-{i:04d}", data, declared)
                r = client.post(f"{record_url}/v1/inspections", json=body, headers=station)
            return r.status_code

        started_at = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            for kind, (data, declared) in bombs().items():
                declared = declared if declared in ("image/jpeg", "image/png") else "image/png"
                for target in ("edge", "record"):
                    n = PER_KIND
                    codes = pool.map(send, [target] * n, [kind] * n, range(n), [data] * n, [declared] * n)
                    answers[f"{target} {kind}"] = Counter(codes)
        # A bomb stored by an older record version, drawn 100 times.
        planted = items[0]
        sha = planted["image_sha256"]
        (root / "var" / "images" / sha[:2] / f"{sha}.png").write_bytes(bombs()["png"][0])
        answers["record overlay of a stored bomb"] = Counter(
            reader.get(planted["overlay_url"]).status_code for _ in range(PER_KIND)
        )
        reader.close()
        client.close()
        form = (
            b'--zd\r\nContent-Disposition: form-data; name="serial"\r\n\r\nSN-1\r\n'
            b'--zd\r\nContent-Disposition: form-data; name="station"\r\n\r\nst-01\r\n'
            b'--zd\r\nContent-Disposition: form-data; name="image"; filename="p.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        streams = {
            "record /v1/login": (f"{record_url}/v1/login", {"content-type": "application/json"}, b""),
            "record /v1/inspections": (
                f"{record_url}/v1/inspections",
                {"content-type": "application/json", **station},
                b"",
            ),
            "edge /v1/inspect": (
                f"{edge_url}/v1/inspect",
                {"content-type": "multipart/form-data; boundary=zd", **camera},
                form,
            ),
        }
        for name, (url, headers, head) in streams.items():
            r = httpx.post(url, content=stream(STREAM_BYTES, head), headers=headers, timeout=120)
            answers[f"200 MB chunked to {name}"] = Counter([r.status_code])
        seconds = time.perf_counter() - started_at
        time.sleep(0.5)
        sampler.done.set()
        sampler.join()
        peak = {name: max(sampler.peak[name], status_mb(pid, "VmHWM")) for name, pid in pids.items()}
        alive = edge.poll() is None and record.poll() is None
        healthy = all(httpx.get(f"{u}/healthz").status_code == 200 for u in (edge_url, record_url))
    finally:
        for proc in (edge, record):
            proc.terminate()
            proc.wait(10)
    result = {
        "command": "python -m tests.probe_memory",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "peak_rss_over_idle_edge": round(peak["edge"] / idle["edge"], 3),
        "peak_rss_over_idle_record": round(peak["record"] / idle["record"], 3),
        "idle_rss_mb": {k: round(v, 1) for k, v in idle.items()},
        "peak_rss_mb": {k: round(v, 1) for k, v in peak.items()},
        "rss_at_start_mb": {k: round(v, 1) for k, v in started.items()},
        "bombs_per_kind_per_service": PER_KIND,
        "bomb_kinds": sorted(bombs()),
        "chunked_body_bytes": STREAM_BYTES,
        "answers": {k: {str(code): n for code, n in sorted(v.items())} for k, v in answers.items()},
        "requests_sent": sum(sum(v.values()) for v in answers.values()),
        "attack_seconds": round(seconds, 1),
        "services_alive_after": alive and healthy,
        "target": "peak RSS within 2x idle for each service",
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if any(code >= 500 for v in answers.values() for code in v):
        sys.exit("a 5xx answer: see " + str(log))


if __name__ == "__main__":
    main()
