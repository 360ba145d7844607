"""`make bench`: the station service against raw ONNX Runtime and an eager-PyTorch handler.

All three run in one invocation on the same cores, so their ratios mean something even on a
noisy shared machine:
- A: the bundle's model alone in ONNX Runtime (prepared tensors, no decoding, no HTTP);
- B: the edge service end to end over HTTP: JPEG decode, micro-batched inference, the
  durable outbox write, with 1, 2 and 4 concurrent cameras;
- C: the obvious baseline: a FastAPI handler that decodes and calls the PyTorch model eagerly.
Servers run in their own processes (uvicorn), the load from this one. The PLC rows (B with a
`plc:` section, timed to the verdict's arrival at a simulated PLC) are in bench_plc.py.
"""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import httpx
import numpy as np
import yaml
from fastapi import FastAPI, File, Form, UploadFile

if TYPE_CHECKING:
    from rich.console import Console

    from zerodefect.datasets.manifest import Manifest

from zerodefect.apikeys import hash_key
from zerodefect.services import answers_healthz, free_port, start_zerodefect, stop_process, wait_ready

BENCH_KEY = "zd_bench_camera_key"


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def model_only(
    bundle: Path, images: list[np.ndarray], threads: int, seconds: float = 8.0
) -> dict[str, float]:
    """A: batch-1 latency and batch-8 throughput of the bare ONNX Runtime session, with the
    verdict (a detector's post-processing, an anomaly model's display heatmap and regions) but
    without decoding or resizing; at batch 1 the graph and the verdict are also timed apart.
    Each half of `seconds` runs at least 16 single images and 64 batched ones: a slow model
    (an anomaly bundle, ~8 img/s here) would otherwise be timed on three batches."""
    from zerodefect.inference.engine import Engine

    engine = Engine.from_bundle(bundle, threads=threads)
    prepared = np.stack([engine.prepare(im) for im in images])
    size = engine.size

    def run(batch: np.ndarray) -> float:
        """The batch's verdicts; returns when the graph finished (the head's work follows)."""
        outputs = engine.infer(batch)
        done = time.perf_counter()
        engine.judge_outputs(outputs, [size] * len(batch))
        return done

    for _ in range(5):
        run(prepared[:8])
    latencies, graph = [], []
    until = time.perf_counter() + seconds / 2
    i = 0
    while time.perf_counter() < until or len(latencies) < 16:
        tick = time.perf_counter()
        ran = run(prepared[i % len(prepared)][None])
        latencies.append((time.perf_counter() - tick) * 1000)
        graph.append((ran - tick) * 1000)
        i += 1
    done, tick = 0, time.perf_counter()
    until = tick + seconds / 2
    while time.perf_counter() < until or done < 64:
        start = (done // 8 * 8) % max(len(prepared) - 8, 1)
        run(prepared[start : start + 8])
        done += 8
    return {
        "model_median_ms": statistics.median(latencies),
        # The ONNX Runtime session alone (every graph output, a heatmap included), and the
        # head's verdict on top of it (a detector's NMS, an anomaly model's regions).
        "graph_median_ms": statistics.median(graph),
        "head_median_ms": statistics.median(b - a for a, b in zip(graph, latencies, strict=True)),
        "model_p99_ms": _percentile(latencies, 99),
        "model_only_ips": done / (time.perf_counter() - tick),
    }


def newest_finished_run(runs: Path, name: str) -> Path | None:
    """The newest folder of training run `name` under `runs` that finished (has summary.json)."""
    finished = sorted((runs / name).glob("*/summary.json"))
    return finished[-1].parent if finished else None


def select_bundle(
    run_dir: Path, manifest: Manifest, int8: bool = True, console: Console | None = None
) -> Path:
    """The bundle a station at line rate would serve from `run_dir`, made when missing: the run's
    own, or its single-view export when it has test-time augmentation, then its INT8 copy."""
    from zerodefect.inference.bundle import read_meta

    bundle = run_dir / "bundle"
    if read_meta(bundle).tta != "none":
        # Test-time augmentation multiplies the cost per part; a station at line rate serves
        # the single-view export of the same weights (its accuracy: docs/results/README.md).
        single = run_dir / "bundle-single-view"
        if not (single / "bundle.json").is_file():
            from zerodefect.training.pipeline import export_run

            export_run(run_dir, single, ["export.tta=none"], console)
        bundle = single
    if int8:
        # The production bundle when `evaluate --baseline` shows its cost within 0.5 points
        # (docs/results/README.md); measured as the station would serve it.
        quantized = run_dir / f"{bundle.name}-int8"
        if not (quantized / "bundle.json").is_file():
            from zerodefect.training.quantize import quantize_bundle

            quantize_bundle(bundle, manifest, quantized)
        bundle = quantized
    return bundle


@contextmanager
def _serving(args: list[str], env: dict[str, str], log: Path) -> Iterator[str]:
    """A `zerodefect` server command in its own process on a free local port: its URL once
    healthy; stopped on the way out."""
    port = free_port()
    proc = start_zerodefect([*args, "--port", str(port)], log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, lambda: answers_healthz(url), f"the server at {url}", log)
        yield url
    finally:
        stop_process(proc)


def multipart(fields: dict[str, str], jpeg: bytes) -> tuple[bytes, str]:
    """A camera's request body, built as plain bytes: the load generator shares the station's
    cores, so it should cost as little CPU as a camera's firmware would."""
    boundary = "zdbenchboundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="f.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    body = b"".join(parts) + head + jpeg + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def load(
    url: str,
    jpegs: list[bytes],
    cameras: int,
    seconds: float,
    fps: float | None = None,
    station: str = "bench",
    serial_prefix: str = "B",
    timings: dict[str, tuple[float, float]] | None = None,
) -> dict[str, float]:
    """Post JPEGs from `cameras` concurrent clients; paced at `fps` per camera when given.
    `timings`, when given, gets each answered part's (sent, answered) perf_counter by serial:
    the PLC rows time the same part's arrival at the PLC against them."""
    latencies: list[float] = []
    errors = 0

    def camera(cam: int) -> None:
        nonlocal errors
        host, port = url.removeprefix("http://").split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        start = time.perf_counter()
        n = 0
        while time.perf_counter() - start < seconds:
            if fps:
                pause = start + n / fps - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)  # the camera's frame clock
            serial = f"{serial_prefix}{cam}-{n}"
            fields = {"serial": serial, "station": station, "camera": f"c{cam}"}
            body, content_type = multipart(fields, jpegs[(cam * 7919 + n) % len(jpegs)])
            tick = time.perf_counter()
            try:
                connection.request(
                    "POST",
                    "/v1/inspect",
                    body,
                    {"Content-Type": content_type, "X-API-Key": BENCH_KEY},
                )
                response = connection.getresponse()
                response.read()
                ok = response.status == 200
            except (OSError, http.client.HTTPException):
                connection.close()
                ok = False
            if ok:
                answered = time.perf_counter()
                latencies.append((answered - tick) * 1000)
                if timings is not None:
                    timings[serial] = (tick, answered)
            else:
                errors += 1
            n += 1
        connection.close()

    tick = time.perf_counter()
    with ThreadPoolExecutor(cameras) as pool:
        list(pool.map(camera, range(cameras)))
    elapsed = time.perf_counter() - tick
    return {
        "ips": len(latencies) / elapsed,
        "p50_ms": _percentile(latencies, 50),
        "p99_ms": _percentile(latencies, 99),
        "requests": len(latencies),
        "errors": errors,
    }


def station_config(bundle: Path, threads: int, work: Path, name: str = "station", **extra: Any) -> Path:
    """The bench station's config file `work/NAME.yaml`, with `extra` keys (a `plc:` section).
    The station trusts this machine's training key, which signed the bundles measured."""
    from zerodefect.inference.signing import public_key_b64, signing_key

    config = work / f"{name}.yaml"
    settings = {
        "station": "bench",
        "model": str(bundle),
        "api_key_hashes": [hash_key(BENCH_KEY)],
        "trusted_keys": [public_key_b64(signing_key())],
        "outbox": str(work / f"outbox-{bundle.parent.name}-{bundle.name}-{name}.db"),
        "threads": threads,
        "budget_ms": 2000,
        "store_images": "flagged",
    }
    config.write_text(yaml.safe_dump(settings | extra))
    return config


def bench_work(out_dir: Path) -> tuple[Path, dict[str, str], Path]:
    """The bench's scratch folder, the servers' environment (their data there) and their log."""
    work = out_dir / "bench-work"
    work.mkdir(parents=True, exist_ok=True)
    return work, {**os.environ, "ZD_DATA_DIR": str(work / "var")}, work / "servers.log"


def edge_load(
    bundle: Path,
    jpegs: list[bytes],
    threads: int,
    seconds: float,
    cameras: tuple[int, ...],
    work: Path,
    env: dict[str, str],
    log: Path,
) -> dict[str, Any]:
    """B: the edge service in its own process, loaded by 1..n cameras, then 2 cameras at 15 fps."""
    config = station_config(bundle, threads, work)
    with _serving(["serve", "edge", "--config", str(config)], env, log) as url:
        load(url, jpegs, 1, 2.0)  # warm-up
        return {
            "e2e": {str(c): load(url, jpegs, c, seconds) for c in cameras},
            "paced_2x15fps": load(url, jpegs, 2, seconds, fps=15.0),
        }


# What a fresh `pip install .[edge]` must not copy from the project folder.
EDGE_SIZE_SKIP = (".git", ".venv", "var", "build", "*.egg-info", "node_modules", "__pycache__", ".*_cache")


def edge_install_mb(project: Path, work: Path) -> float:
    """MB a fresh venv takes after `pip install PROJECT[edge]` (pip and setuptools included, as a
    station's venv has them); the venv is removed after. The project is copied first, so the
    build leaves nothing in it. pip takes its packages from the configured index or cache."""
    import shutil
    import subprocess
    import sys

    scratch = work / "edge-size"
    shutil.rmtree(scratch, ignore_errors=True)
    source, venv = scratch / "src", scratch / "venv"
    shutil.copytree(project, source, ignore=shutil.ignore_patterns(*EDGE_SIZE_SKIP))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[edge]"],
            check=True,
            capture_output=True,
        )
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file() and not f.is_symlink())
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return size / 1e6


def pull_load(
    bundle: Path,
    jpegs: list[bytes],
    threads: int,
    frames: int,
    work: Path,
    env: dict[str, str],
    log: Path,
    timeout: float = 300.0,
) -> dict[str, float]:
    """B without HTTP: the same station, in its own process, pulls `frames` JPEGs from a folder
    (`serve edge --source`, zerodefect.edge.sources) and judges them one after another, each
    durably in the outbox before the next, as one camera would post them. Timed by the outbox's
    own `created` stamps, so the station's start is not counted: img/s over the run, and p50/p99
    of the time between consecutive parts (one part's whole cost)."""
    import sqlite3

    folder = work / "pull-frames"
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        stale.unlink()
    for i in range(frames):
        data = jpegs[i % len(jpegs)]  # a run's own files may be PNGs: named by what they are
        suffix = ".png" if data.startswith(b"\x89PNG") else ".jpg"
        (folder / f"{i:06d}{suffix}").write_bytes(data)
    config = station_config(bundle, threads, work, name="pull")
    outbox = Path(yaml.safe_load(config.read_text())["outbox"])
    outbox.unlink(missing_ok=True)
    args = ["serve", "edge", "--config", str(config), "--source", str(folder), "--serial-prefix", "PULL"]
    with _serving(args, env, log) as url:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if httpx.get(f"{url}/readyz", timeout=10).json()["outbox"]["total"] >= frames:
                break
            time.sleep(0.5)  # polling a running process, not a timing assumption
    with sqlite3.connect(outbox) as db:
        created = [row[0] for row in db.execute("SELECT created FROM outbox ORDER BY created")]
    gaps = [(b - a) * 1000 for a, b in zip(created, created[1:], strict=False)]
    span = created[-1] - created[0] if len(created) > 1 else float("nan")
    return {
        "ips": (len(created) - 1) / span,
        "p50_ms": _percentile(gaps, 50),
        "p99_ms": _percentile(gaps, 99),
        "requests": len(created),
        "errors": frames - len(created),
    }


def measure_bundle(
    bundle: Path,
    images: list[np.ndarray],
    jpegs: list[bytes],
    out_dir: Path,
    threads: int = 2,
    seconds: float = 10.0,
    cameras: tuple[int, ...] = (1, 2, 4),
    run_dir: Path | None = None,
    one_thread: bool = False,
) -> dict[str, Any]:
    """A and B for any task's bundle (A on one thread too with `one_thread`), and C when the
    training `run_dir` with its PyTorch weights is given; with the ratios of the targets."""
    from zerodefect.inference.bundle import read_meta

    work, env, log = bench_work(out_dir)
    meta = read_meta(bundle)
    result: dict[str, Any] = {
        "bundle": str(bundle),
        "input_size": meta.input.height,
        "input_hw": [meta.input.height, meta.input.width],
        "threads": threads,
    }
    result.update(model_only(bundle, images, threads))
    if one_thread:
        alone = model_only(bundle, images, 1, seconds=4.0)
        result["model_median_ms_1thread"] = alone["model_median_ms"]
        result["graph_median_ms_1thread"] = alone["graph_median_ms"]
    result.update(edge_load(bundle, jpegs, threads, seconds, cameras, work, env, log))
    # The same station without HTTP (pull mode, one source): about `seconds` of frames at the
    # rate of one camera over HTTP, so B at 1 camera over this is what HTTP itself costs.
    frames = int(min(max(result["e2e"][str(cameras[0])]["ips"] * seconds, 100), 3000))
    result["pull"] = pull_load(bundle, jpegs, threads, frames, work, env, log)
    result["pull_over_http_1camera"] = result["pull"]["ips"] / result["e2e"][str(cameras[0])]["ips"]
    # A again after B: the ratio takes the mean of both, so a load that other jobs put on a
    # shared machine during the run shifts A and B alike instead of only one of them.
    result["model_only_ips_before"] = result["model_only_ips"]
    result["model_only_ips_after"] = model_only(bundle, images, threads, seconds)["model_only_ips"]
    result["model_only_ips"] = (result["model_only_ips_before"] + result["model_only_ips_after"]) / 2
    if run_dir is not None and (run_dir / "best.pt").exists():
        # C: the eager-PyTorch handler, same weights and test-time augmentation as the bundle.
        eager = ["bench-eager-server", str(run_dir), "--threads", str(threads), "--tta", meta.tta]
        with _serving(eager, env, log) as url:
            load(url, jpegs, 1, 2.0)  # warm-up
            result["eager"] = {str(c): load(url, jpegs, c, seconds) for c in cameras}
    best = max(result["e2e"].values(), key=lambda r: r["ips"])
    result["e2e_ips"] = best["ips"]
    result["e2e_over_model"] = best["ips"] / result["model_only_ips"]
    if "eager" in result:
        result["eager_ips"] = max(r["ips"] for r in result["eager"].values())
        result["e2e_over_eager"] = result["e2e_ips"] / result["eager_ips"]
    result["p99_ms"] = result["paced_2x15fps"]["p99_ms"]
    result["p99_over_model_median"] = result["p99_ms"] / result["model_median_ms"]
    return result


def measure_run(
    run_dir: Path, out_dir: Path, threads: int = 2, seconds: float = 10.0, count: int = 64
) -> dict[str, Any]:
    """A and B (A on one thread too) for a finished run's own bundle, on up to `count` of its
    test images sent as their files' bytes (the plant's own JPEGs, as a camera sends them)."""
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.preprocess import decode_image

    manifest = Manifest.read(run_dir / "manifest.jsonl")
    jpegs = [manifest.resolve(s).read_bytes() for s in manifest.split("test")[:count]]
    images = [decode_image(j) for j in jpegs]
    return measure_bundle(run_dir / "bundle", images, jpegs, out_dir, threads, seconds, one_thread=True)


# The stand-in anomaly run's parts: KolektorSDD's as its camera gives them (height, width) and
# its split's sizes (good, defective), so the bench measures the shape and bank of the real one.
STANDIN_SOURCE = (1260, 500)
STANDIN_SPLITS = {"train": (243, 0), "val": (32, 8), "test": (48, 16)}


def write_standin_parts(
    root: Path,
    seed: int = 0,
    source: tuple[int, int] = STANDIN_SOURCE,
    splits: dict[str, tuple[int, int]] = STANDIN_SPLITS,
) -> Path:
    """Generated parts of `source` (height, width) pixels, (good, defective) per split, JPEG as
    a camera sends them; a defective part carries a scratch and a spot, and their mask (the
    pixels that differ from the same part without them). Returns the manifest."""
    from zerodefect.datasets.manifest import Manifest, Sample
    from zerodefect.latency import part_image

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    samples, k = [], seed
    for split, (good, defective) in splits.items():
        for i in range(good + defective):
            k += 1
            name = f"images/{split}_{i:03d}.jpg"
            part = part_image(np.random.default_rng(k), *source, defects=int(i >= good))
            sample = Sample(name, ["scratch" if i >= good else "good"], split)
            if i >= good:
                clean = part_image(np.random.default_rng(k), *source, defects=0)
                mask = (np.abs(part.astype(np.int16) - clean).max(axis=2) > 0).astype(np.uint8) * 255
                sample.mask = f"masks/{split}_{i:03d}.png"
                cv2.imwrite(str(root / sample.mask), mask)
            bgr = cv2.cvtColor(part, cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(root / name), bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
            samples.append(sample)
    manifest = Manifest("anomaly", ["good", "scratch"], samples, root, "good", "bench-standin-parts")
    return manifest.write(root / "manifest.jsonl")


def standin_anomaly_run(config: Path, data_dir: Path, console: Console | None = None) -> Path:
    """A finished anomaly run when no real one is at hand (no data set, no network): `config`'s
    model and calibration (input size, bank share, smoothing) fitted on generated parts
    (write_standin_parts) through the one training pipeline. Trained once, then found by name:
    the name carries a digest of the model section, so a changed config trains a new one."""
    import hashlib

    from zerodefect.training.config import load_config
    from zerodefect.training.pipeline import run_training

    digest = hashlib.sha256(load_config(config).model.model_dump_json().encode()).hexdigest()[:8]
    name = f"bench-anomaly-{digest}"
    found = newest_finished_run(data_dir / "runs", name)
    if found is not None:
        return found
    parts = data_dir / "bench-anomaly" / "parts"
    manifest = parts / "manifest.jsonl"
    if not manifest.is_file():
        write_standin_parts(parts)
    overrides = [
        f"name={name}",
        f"data.manifest={manifest}",
        "mlflow.experiment=bench",
        f"mlflow.registered_model={name}",
    ]
    return run_training(load_config(config, overrides), console=console).run_dir


def heatmap_png(run_dir: Path, count: int = 64, repeats: int = 3) -> dict[str, float]:
    """What the record side adds per flagged anomaly part: its display heatmap as an 8-bit PNG
    (OpenCV's default level), then base64, the way the station sends it; median ms and bytes
    over the first `count` test images (their real heatmaps: compression depends on them), and
    the share of those the bundle rejects (the parts whose regions the head cuts)."""
    import base64

    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.engine import Engine
    from zerodefect.inference.preprocess import read_image

    manifest = Manifest.read(run_dir / "manifest.jsonl")
    engine = Engine.from_bundle(run_dir / "bundle", threads=1)
    images = [read_image(manifest.resolve(s)) for s in manifest.split("test")[:count]]
    results = engine.predict(images)
    heatmaps = [r.heatmap for r in results if r.heatmap is not None]
    times, sizes = [], []
    for _ in range(repeats):
        for heat in heatmaps:
            tick = time.perf_counter()
            png = cv2.imencode(".png", np.round(heat * 255).astype(np.uint8))[1]
            base64.b64encode(png.tobytes())
            times.append((time.perf_counter() - tick) * 1000)
            sizes.append(len(png))
    return {
        "heatmap_png_ms": statistics.median(times),
        "heatmap_png_bytes": statistics.median(sizes),
        "rejected_share": sum(r.verdict == "reject" for r in results) / max(len(results), 1),
    }


def run_bench(
    bundle: Path,
    run_dir: Path | None,
    images: list[np.ndarray],
    out_dir: Path,
    threads: int = 2,
    seconds: float = 10.0,
    cameras: tuple[int, ...] = (1, 2, 4),
    command: str = "make bench",
    plc: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure A, B and C of the main bundle, with what the report's header says of the run;
    with `plc`, then the PLC rows of the same bundle against the same run's A and B."""
    from zerodefect.inference.bundle import read_meta

    jpegs = [
        cv2.imencode(".jpg", cv2.cvtColor(im, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
        for im in images
    ]
    result: dict[str, Any] = {
        "threads": threads,
        "cores": os.cpu_count(),
        "command": command,
        "cameras": list(cameras),
        "tta": read_meta(bundle).tta,
    }
    result.update(measure_bundle(bundle, images, jpegs, out_dir, threads, seconds, cameras, run_dir))
    if plc:
        from zerodefect.bench_plc import measure_plc

        result["plc"] = measure_plc(bundle, jpegs, result, out_dir, threads, seconds, console)
    return result


def _load_rows(section: dict[str, Any]) -> list[str]:
    """B's table rows of one bundle: each camera count, then the paced load."""
    lines = [
        f"| B: edge over HTTP, {c} camera(s) | {r['ips']:.1f} img/s, p50 {r['p50_ms']:.1f} ms, "
        f"p99 {r['p99_ms']:.1f} ms |"
        for c, r in section["e2e"].items()
    ]
    if "pull" in section:
        pull = section["pull"]
        lines.append(
            f"| B without HTTP: pull mode, 1 source in the station's process | {pull['ips']:.1f} img/s, "
            f"per part p50 {pull['p50_ms']:.1f} ms, p99 {pull['p99_ms']:.1f} ms |"
        )
    paced = section["paced_2x15fps"]
    lines.append(f"| B at 2 cameras x 15 fps | p50 {paced['p50_ms']:.1f} ms, p99 {paced['p99_ms']:.1f} ms |")
    return lines


def _throughput(section: dict[str, Any]) -> str:
    """A's batch-8 throughput cell: the mean of A before and after B when both were measured."""
    cell = f"{section['model_only_ips']:.1f} img/s"
    if "model_only_ips_after" in section:
        before, after = section["model_only_ips_before"], section["model_only_ips_after"]
        cell += f" (mean of {before:.1f} before B and {after:.1f} after)"
    return cell


def _provenance(result: dict[str, Any], section: dict[str, Any]) -> str:
    """Where a section's rows come from: the report's run, or a separate one it names."""
    command = section.get("command", result.get("command"))
    if command == result.get("command"):
        return "same run and cores"
    return f"measured separately by `{command}`"


def _plc_lines(result: dict[str, Any], plc: dict[str, Any]) -> list[str]:
    """The PLC section of docs/benchmarks.md: per protocol, the camera-to-PLC time, the same
    parts' HTTP answer, and what the PLC adds after it; the ratios to the model median."""
    from zerodefect.bench_plc import PROTOCOLS as names

    def row(label: str, cell) -> str:
        return f"| {label} | " + " | ".join(cell(plc[n]) for n in names) + " |"

    # The protocol's writer alone (no station, no load): what the PLC link itself costs.
    alone = []
    if all("alone_write_p50_ms" in plc[n] for n in names):
        alone.append(
            row(
                "the writer alone, no station: a write (OPC UA: the handshake) / to the PLC",
                lambda r: (
                    f"p50 {r['alone_write_p50_ms']:.2f} / {r['alone_to_plc_p50_ms']:.2f} ms, "
                    f"p99 {r['alone_write_p99_ms']:.2f} / {r['alone_to_plc_p99_ms']:.2f} ms"
                ),
            )
        )
    return [
        "",
        "## PLC",
        "",
        f"Bundle `{plc['bundle']}`, {_provenance(result, plc)}. {plc['cameras']} cameras post at "
        f"{plc['fps']:g} fps each for {plc['seconds']:g} s to a station whose `plc:` section writes every "
        "verdict to a simulated PLC in the bench's process (zerodefect/plcsim.py: asyncua's and "
        "pymodbus's servers over loopback). A part's time runs from its camera sending the frame to the "
        "PLC holding its verdict: OPC UA's ResultValid after Result, PartId and Score (the PLC raises Ack "
        "in the same scan), Modbus's result-block write (acknowledged in its response). \"After the HTTP "
        "answer\" is, part by part, the PLC's arrival minus the camera's HTTP answer.",
        "",
        "| measure | " + " | ".join(names.values()) + " |",
        "|---|" + "---|" * len(names),
        row("parts sent / seen at the PLC", lambda r: f"{r['parts_sent']} / {r['parts_seen_at_plc']}"),
        row(
            "frame sent to verdict at the PLC",
            lambda r: f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms",
        ),
        row(
            "HTTP answer, same parts",
            lambda r: f"p50 {r['http_p50_ms']:.1f} ms, p99 {r['http_p99_ms']:.1f} ms",
        ),
        row(
            "PLC after the HTTP answer",
            lambda r: f"p50 {r['added_p50_ms']:.1f} ms, p99 {r['added_p99_ms']:.1f} ms",
        ),
        row(
            "station: ack timeouts, drops",
            lambda r: f"{r['station_ack_timeouts']:g}, {r['station_dropped']:g}",
        ),
        *alone,
        "",
        f"Same run: A, model only, batch 1 median {plc['model_median_ms']:.2f} ms; B at 2 cameras x 15 fps "
        f"without a PLC, p99 {plc['http_p99_ms']:.1f} ms.",
        "",
        "| ratio | measured | target |",
        "|---|---|---|",
        f"| OPC UA p99 / model median | {plc['opcua_p99_over_model_median']:.2f} | <= 2 |",
        f"| Modbus TCP p99 / model median | {plc['modbus_p99_over_model_median']:.2f} | <= 2 |",
        f"| HTTP verdict p99 (no PLC) / model median | {plc['http_p99_over_model_median']:.2f} | <= 2 |",
        "",
        'Where the time goes, and the PLC writer alone: docs/results/README.md, "PLC latency".',
    ]


def write_reports(result: dict[str, Any], docs: Path) -> tuple[Path, Path]:
    """docs/results/edge-bench.json and docs/benchmarks.md: a section per bundle measured (the
    classifier's at the top level, then `detector` and `anomaly`), each with its ratios; the
    PLC rows (`plc`) also go to docs/results/plc-bench.json."""
    (docs / "results").mkdir(parents=True, exist_ok=True)
    json_path = docs / "results" / "edge-bench.json"
    json_path.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    if result.get("plc"):
        plc_json = {"command": result.get("command"), **result["plc"]}
        (docs / "results" / "plc-bench.json").write_text(
            json.dumps(plc_json, indent=2, sort_keys=True) + "\n"
        )
    lines = ["# Benchmarks", ""]
    if "model_median_ms" in result:
        lines += [
            f"Made by `{result['command']}` on {result['cores']} cores, {result['threads']} ONNX Runtime "
            f"threads, bundle `{result['bundle']}` ({result['input_size']} px, test-time augmentation: "
            f"{result['tta']}). All rows come from one run; compare ratios, not absolute times.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| A: model only, batch 1 median | {result['model_median_ms']:.2f} ms |",
            f"| A: model only, batch 8 throughput | {_throughput(result)} |",
            *_load_rows(result)[:-1],
        ]
        for c, r in result.get("eager", {}).items():
            lines.append(
                f"| C: eager PyTorch handler, {c} camera(s) | {r['ips']:.1f} img/s, p50 {r['p50_ms']:.1f} ms, "
                f"p99 {r['p99_ms']:.1f} ms |"
            )
        lines += [
            _load_rows(result)[-1],
            "",
            "| ratio | measured | target |",
            "|---|---|---|",
            f"| B / A throughput | {result['e2e_over_model']:.2f} | >= 0.90 |",
        ]
        if "e2e_over_eager" in result:
            lines.append(f"| B / C throughput | {result['e2e_over_eager']:.2f} | >= 3 |")
        if "pull_over_http_1camera" in result:
            lines.append(
                f"| pull mode / B at 1 camera throughput (what HTTP costs) | "
                f"{result['pull_over_http_1camera']:.2f} | |"
            )
        lines.append(f"| p99 at 2x15 fps / model median | {result['p99_over_model_median']:.2f} | <= 2 |")
        if "edge_install_mb" in result:
            lines.append(
                f"| `pip install .[edge]`, a fresh venv (MB) | {result['edge_install_mb']:.0f} | <= 400 |"
            )
    if result.get("plc"):
        lines += _plc_lines(result, result["plc"])
    det = result.get("detector")
    if det:
        lines += [
            "",
            "## Detector",
            "",
            f"Bundle `{det['bundle']}` ({det['input_size']} px FCOS), the plant's own JPEGs, "
            f"{_provenance(result, det)}. "
            "Model-only times include the numpy post-processing (score filter, top-k, NMS) but not the resize.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| A: model only, 1 thread, batch 1 median | {det['model_median_ms_1thread']:.2f} ms |",
            f"| A: model only, {result.get('threads', 2)} threads, batch 1 median | {det['model_median_ms']:.2f} ms |",
            f"| A: model only, batch 8 throughput | {_throughput(det)} |",
            *_load_rows(det),
            "",
            "| ratio | measured | target |",
            "|---|---|---|",
            f"| B / A throughput | {det['e2e_over_model']:.2f} | >= 0.80 |",
            f"| p99 at 2x15 fps / model median | {det['p99_over_model_median']:.2f} | <= 2 |",
        ]
    ano = result.get("anomaly")
    if ano:
        height, width = ano["input_hw"]
        what = (
            f"a stand-in fitted by the anomaly config's model section on generated {STANDIN_SOURCE[0]} x "
            f"{STANDIN_SOURCE[1]} parts (KolektorSDD's size and split; no data set needed)"
            if ano["standin"]
            else "a trained run, on its own test images"
        )
        lines += [
            "",
            "## Anomaly (PatchCore)",
            "",
            f"Bundle `{ano['bundle']}` ({height} x {width} px input, H x W), {what}, "
            f"{_provenance(result, ano)}. {ano['rejected_share']:.0%} of the test images sent are "
            "rejected. "
            "Model-only times include the head's verdict (the display heatmap of every part, the "
            "regions of rejected ones) but not the decode and resize; the ONNX Runtime row is the "
            "session alone (scores and the full-size heatmap). A and B are a minute apart: on a shared "
            "machine other jobs move them (A before and after B shows by how much), so repeat the run "
            "before trusting a ratio near its target.",
            "",
            "| measure | value | target |",
            "|---|---|---|",
            f"| A: ONNX Runtime alone, 1 thread, batch 1 median, heatmap included | "
            f"{ano['graph_median_ms_1thread']:.2f} ms | <= 40 ms |",
            f"| A: model only with the verdict, 1 thread, batch 1 median | {ano['model_median_ms_1thread']:.2f} ms | |",
            f"| A: model only, {ano['threads']} threads, batch 1 median "
            f"(of which the head) | {ano['model_median_ms']:.2f} ms ({ano['head_median_ms']:.2f} ms) | |",
            f"| A: model only, batch 8 throughput | {_throughput(ano)} | |",
            *(f"{row[:-1]}| |" for row in _load_rows(ano)),
            f"| heatmap as 8-bit PNG + base64 (the record's copy, per flagged part) | "
            f"{ano['heatmap_png_ms']:.2f} ms, {ano['heatmap_png_bytes'] / 1024:.1f} KiB | |",
            "",
            "| ratio | measured | target |",
            "|---|---|---|",
            f"| B / A throughput | {ano['e2e_over_model']:.2f} | >= 0.85 |",
            f"| p99 at 2x15 fps / model median | {ano['p99_over_model_median']:.2f} | "
            f"{'<= 2' if ano['model_only_ips'] > 30 else 'none: 30 img/s is over its capacity'} |",
        ]
    md_path = docs / "benchmarks.md"
    md_path.write_text("\n".join(lines) + "\n")
    return md_path, json_path


def eager_app(run_dir: Path, threads: int, tta: str = "none"):
    """C: what a user might write first: decode, then call the PyTorch model per request.

    It runs the same weights with the same test-time augmentation as the bundle under test.
    """
    import torch

    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.preprocess import decode_image, resize
    from zerodefect.training.config import load_config
    from zerodefect.training.tasks import get_task

    torch.set_num_threads(threads)
    cfg = load_config(run_dir / "config.yaml")
    manifest = Manifest.read(run_dir / "manifest.jsonl")
    model, _ = get_task(cfg.task).build_model(cfg, manifest, None)
    model.load_state_dict(torch.load(run_dir / "best.pt", map_location="cpu", weights_only=False)["model"])
    model.tta = tta
    model = model.eval().to(memory_format=torch.channels_last)
    size = cfg.model.input_size
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/inspect")
    def inspect(image: UploadFile = File(...), serial: str = Form(...)) -> dict:
        pixels = resize(decode_image(image.file.read()), (size, size))
        with torch.no_grad():
            probs = model(torch.from_numpy(pixels[None]))[0]
        return {"serial": serial, "score": float(1 - probs[0])}

    return app
