"""PLC bench: from the frame a camera sends to its verdict arriving at the PLC, at 2 cameras x
15 fps, as a ratio to the bundle's model-only median (issue 13's bar: p99 <= 2, as for the HTTP
verdict). The station runs in its own process (`zerodefect serve edge`) with a `plc:` section;
the PLCs are asyncua's and pymodbus's servers in this process (tests/plcsims.py), which time
each verdict's arrival on the same clock as the camera's send.

Run from the repository root (a bundle made by training, signed by this machine's key):
    .venv/bin/python -m bench.plc_bench var/runs/RUN/bundle --out docs/results/plc-bench.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from tests.plcsims import ModbusPlcSim, OpcUaPlcSim
from zerodefect.apikeys import hash_key
from zerodefect.bench import BENCH_KEY, _percentile, _serving, model_only, multipart
from zerodefect.services import free_port


def parts(count: int = 16, size: int = 320) -> list[np.ndarray]:
    """Generated parts (RGB): a textured plate with a dark spot in a different place each."""
    rng = np.random.default_rng(0)
    images = []
    for i in range(count):
        image = rng.normal(128, 12, (size, size, 3)).clip(0, 255).astype(np.uint8)
        cv2.circle(image, (40 + 15 * i, size // 2), 12, (30, 30, 30), -1)
        images.append(image)
    return images


def paced(
    url: str, jpegs: list[bytes], seconds: float, cameras: int = 2, fps: float = 15.0
) -> dict[str, Any]:
    """Cameras posting at `fps` each; the perf_counter at which each part's frame was sent."""
    sent: dict[str, float] = {}
    http_ms: list[float] = []
    host, port = url.removeprefix("http://").split(":")

    def camera(cam: int) -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            pause = start + n / fps - time.perf_counter()
            if pause > 0:
                time.sleep(pause)  # the camera's frame clock
            serial = f"P{cam}-{n}"
            body, content_type = multipart(
                {"serial": serial, "station": "bench", "camera": f"c{cam}"}, jpegs[(cam * 7 + n) % len(jpegs)]
            )
            tick = time.perf_counter()
            connection.request(
                "POST", "/v1/inspect", body, {"Content-Type": content_type, "X-API-Key": BENCH_KEY}
            )
            response = connection.getresponse()
            response.read()
            if response.status == 200:
                sent[serial] = tick
                http_ms.append((time.perf_counter() - tick) * 1000)
            n += 1
        connection.close()

    with ThreadPoolExecutor(cameras) as pool:
        list(pool.map(camera, range(cameras)))
    return {"sent": sent, "http_ms": http_ms}


def measure(
    bundle: Path,
    plc: dict,
    arrivals,
    jpegs: list[bytes],
    seconds: float,
    work: Path,
    trusted: str,
    threads: int,
) -> dict[str, Any]:
    config = work / f"station-{plc['protocol']}.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "station": "bench",
                "model": str(bundle),
                "api_key_hashes": [hash_key(BENCH_KEY)],
                "trusted_keys": [trusted],
                "outbox": str(work / f"outbox-{plc['protocol']}.db"),
                "threads": threads,
                "budget_ms": 2000,
                "plc": plc,
            }
        )
    )
    env = {**os.environ, "ZD_DATA_DIR": str(work / "var")}
    with _serving(["serve", "edge", "--config", str(config)], env, work / "servers.log") as url:
        paced(url, jpegs, 2.0)  # warm-up
        run = paced(url, jpegs, seconds)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(s in arrivals() for s in run["sent"]):
            time.sleep(0.05)
    at = arrivals()
    plc_ms = [(at[s] - t) * 1000 for s, t in run["sent"].items() if s in at]
    return {
        "parts": len(run["sent"]),
        "missing_at_plc": len(run["sent"]) - len(plc_ms),
        "plc_p50_ms": _percentile(plc_ms, 50),
        "plc_p99_ms": _percentile(plc_ms, 99),
        "http_p50_ms": _percentile(run["http_ms"], 50),
        "http_p99_ms": _percentile(run["http_ms"], 99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--trusted-key", help="base64 public key of the bundle's signer (default: this machine's)"
    )
    parser.add_argument("--work", type=Path, default=Path("var/plc-bench"))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.trusted_key is None:
        from zerodefect.inference.signing import public_key_b64, signing_key

        args.trusted_key = public_key_b64(signing_key())
    args.work.mkdir(parents=True, exist_ok=True)
    images = parts()
    jpegs = [cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR))[1].tobytes() for im in images]
    result: dict[str, Any] = {"bundle": str(args.bundle), "cores": os.cpu_count(), "seconds": args.seconds}
    result["model_median_ms"] = model_only(args.bundle, images, args.threads)["model_median_ms"]

    opcua = OpcUaPlcSim(f"opc.tcp://127.0.0.1:{free_port()}/zd/")
    opcua.start()
    try:
        section = {"protocol": "opcua", "url": opcua.url, "ack_timeout_ms": 500}
        for name in ("result", "part_id", "score", "result_valid", "ack"):
            section[f"{name}_node"] = opcua.node(
                {"part_id": "PartId", "result_valid": "ResultValid"}.get(name, name.title())
            )
        arrivals = lambda: dict(opcua.arrivals)  # noqa: E731
        result["opcua"] = measure(
            args.bundle, section, arrivals, jpegs, args.seconds, args.work, args.trusted_key, args.threads
        )
    finally:
        opcua.stop()

    modbus = ModbusPlcSim(free_port())
    modbus.start()
    try:
        section = {"protocol": "modbus", "host": "127.0.0.1", "port": modbus.port, "reject_coil": 0}
        section |= {"result_register": 10, "part_id_registers": 10, "heartbeat_register": 0, "pulse_ms": 20}
        arrivals = lambda: {part: at for _, part, at in modbus.timed_results(10, 10)}  # noqa: E731
        result["modbus"] = measure(
            args.bundle, section, arrivals, jpegs, args.seconds, args.work, args.trusted_key, args.threads
        )
    finally:
        modbus.close()

    for name in ("opcua", "modbus"):
        result[f"{name}_p99_over_model_median"] = result[name]["plc_p99_ms"] / result["model_median_ms"]
        result[f"{name}_p50_over_model_median"] = result[name]["plc_p50_ms"] / result["model_median_ms"]
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
