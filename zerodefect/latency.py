"""`python -m zerodefect.latency`: where a detector's milliseconds per image go, stage by stage.

The documented detector latency was measured on NEU-DET's 200 px images with a trained model;
users see more on their own, larger images, and on early models. This times each stage a part
goes through on a station (decode, resize, the ONNX Runtime graph, the numpy post-processing),
on one ONNX Runtime thread at batch 1, for generated source images of several sizes (JPEG and
PNG) and for few and many candidate boxes over the bundle's score floor.

The bundle needs no data set: the FCOS detector with the shipped ImageNet backbone and an
untrained head, exported and parity-checked like a trained one. An untrained FCOS head scores
every point at about sqrt(0.01 x 0.5) = 0.07, over the 0.05 floor: the worst case for
post-processing, which an early or poorly trained model approaches. Fewer candidates are
obtained by raising the score floor per image so that a chosen number of scores pass.

Stages are interleaved within each repeat and medians are reported, so ratios within one run
hold on a shared, noisy machine even when absolute times drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from zerodefect.inference.engine import Engine
from zerodefect.inference.postprocess import detections_from_dense
from zerodefect.inference.preprocess import decode_image

CLASSES = [f"defect{i}" for i in range(6)]  # as many classes as NEU-DET


def build_untrained_bundle(folder: Path, size: int = 320, seed: int = 0) -> Path:
    """An FCOS bundle at `size` px: ImageNet backbone, untrained head, exported with parity."""
    import torch

    from zerodefect.inference.bundle import BundleMeta, InputSpec
    from zerodefect.models.detector import build_detector
    from zerodefect.training.detection import predict_detections
    from zerodefect.training.export import export_detector_bundle

    torch.manual_seed(seed)
    model, _ = build_detector(CLASSES, size, pretrained="imagenet")
    model.eval()
    parity = np.stack([part_image(np.random.default_rng(seed + i), size) for i in range(2)])
    meta = BundleMeta(
        name="latency-probe",
        task="detection",
        classes=CLASSES,
        input=InputSpec(
            height=size,
            width=size,
            mean=model.offset.flatten().div(255).tolist(),
            std=model.scale.flatten().div(255).tolist(),
        ),
        outputs={"boxes": "[N, A, 4]", "scores": "[N, A, C]"},
        threshold=0.5,
        postprocess={**model.postprocess_params(), "level_sizes": list(model.level_sizes)},
    )
    export_detector_bundle(
        model, meta, folder, parity, predict_detections(model, parity, torch.device("cpu"))
    )
    return folder


def part_image(
    rng: np.random.Generator, height: int, width: int | None = None, defects: int = 3
) -> np.ndarray:
    """A textured grey-brown part (`height` x `width`, square when no width), RGB uint8, with
    `defects` dark scratches each beside a bright spot (0: a good part)."""
    width = width or height
    side = min(height, width)
    grey = rng.normal(140, 14, (height, width)).clip(0, 255).astype(np.uint8)
    grey = cv2.GaussianBlur(grey, (3, 3), 0)
    for _ in range(defects):
        x1, x2 = (int(v) for v in rng.integers(0, width, 2))
        y1, y2 = (int(v) for v in rng.integers(0, height, 2))
        cv2.line(grey, (x1, y1), (x2, y2), 30, max(2, side // 60))
        cv2.circle(grey, (x1, y2), max(3, side // 30), 230, -1)
    tint = np.array([1.0, 0.95, 0.85], np.float32)
    return (grey[..., None] * tint).clip(0, 255).astype(np.uint8)


def encode(image: np.ndarray, fmt: str) -> bytes:
    """RGB -> JPEG (quality 95, as `make bench` sends) or PNG (OpenCV's default level 1)."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if fmt == "jpeg" else []
    return cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr, params)[1].tobytes()


def floor_for(scores: np.ndarray, candidates: int | None, default: float) -> float:
    """The score floor that lets `candidates` scores of one image pass (None: the bundle's)."""
    if candidates is None:
        return default
    flat = np.sort(scores.reshape(-1))[::-1]
    if candidates == 0:
        return float(flat[0])
    return float(np.nextafter(flat[candidates], np.float32(1)))


class StageClock:
    """Wall and thread-CPU milliseconds of each stage. On one ORT thread the graph runs in the
    calling thread, so CPU time is the work itself and wall minus CPU is the wait for a core."""

    def __init__(self) -> None:
        self.wall: dict[str, list[float]] = {}
        self.cpu: dict[str, list[float]] = {}
        self._marks = (time.perf_counter(), time.thread_time())

    def start(self) -> None:
        self._marks = (time.perf_counter(), time.thread_time())

    def lap(self, stage: str) -> None:
        """Record the time since the last mark under `stage` and set a new mark."""
        wall, cpu = time.perf_counter(), time.thread_time()
        self.wall.setdefault(stage, []).append((wall - self._marks[0]) * 1000)
        self.cpu.setdefault(stage, []).append((cpu - self._marks[1]) * 1000)
        self._marks = (wall, cpu)

    def medians(self) -> dict[str, dict[str, float]]:
        return {
            "wall": {k: statistics.median(v) for k, v in self.wall.items()},
            "cpu": {k: statistics.median(v) for k, v in self.cpu.items()},
        }


def time_stages(
    engine: Engine,
    sources: dict[str, list[bytes]],
    candidates: list[int | None],
    repeats: int,
) -> dict[str, dict[str, Any]]:
    """Median ms per image of each stage, per source, over `repeats` passes.

    Every pass goes through all sources in turn, so drift on a shared machine hits them alike.
    Post-processing is timed once per candidate count on the same graph outputs. The total is
    the sum of the stage medians at the bundle's own floor: what `Engine.predict` costs on
    encoded bytes.
    """
    post = engine.meta.postprocess
    clocks = {key: StageClock() for key in sources}
    counts: dict[str, dict[str, list[int]]] = {key: {} for key in sources}
    for _ in range(repeats):
        for key, encoded in sources.items():
            clock = clocks[key]
            for data in encoded:
                clock.start()
                image = decode_image(data)
                clock.lap("decode")
                prepared = engine.prepare(image)
                clock.lap("resize")
                boxes, scores = (out[0] for out in engine.infer(prepared[None]))
                clock.lap("run")
                for count in candidates:
                    stage = "post_floor" if count is None else f"post_{count}"
                    floor = floor_for(scores, count, post["score_thresh"])
                    clock.start()
                    det = detections_from_dense(
                        boxes,
                        scores,
                        post["level_sizes"],
                        floor,
                        post["nms_thresh"],
                        post["topk_candidates"],
                        post["detections_per_img"],
                    )
                    clock.lap(stage)
                    counts[key].setdefault(stage, []).append(int((scores > floor).sum()))
                    counts[key].setdefault(stage + "_kept", []).append(len(det))
    result = {}
    for key, clock in clocks.items():
        row: dict[str, Any] = clock.medians()
        for kind in ("wall", "cpu"):
            m = row[kind]
            m["total_floor"] = m["decode"] + m["resize"] + m["run"] + m["post_floor"]
        row["over_floor"] = {k: int(statistics.median(v)) for k, v in counts[key].items()}
        row["images"] = len(sources[key]) * repeats
        result[key] = row
    return result


def run(
    bundle: Path,
    sides: list[int],
    formats: list[str],
    candidates: list[int | None],
    images: int,
    repeats: int,
    contend: int = 0,
) -> dict[str, Any]:
    """Stage medians for each source side and format, on one engine with one thread; then
    again with `contend` busy processes competing for the cores, when asked."""
    engine = Engine.from_bundle(bundle, threads=1)
    warm = engine.prepare(part_image(np.random.default_rng(0), engine.size[0]))
    for _ in range(3):
        engine.infer(warm[None])
    sources: dict[str, list[bytes]] = {}
    for side in sides:
        pixels = [part_image(np.random.default_rng(100 + i), side) for i in range(images)]
        for fmt in formats:
            sources[f"{side}-{fmt}"] = [encode(p, fmt) for p in pixels]
    out: dict[str, Any] = {
        "bundle": str(bundle),
        "input_size": engine.size[0],
        "ort_threads": 1,
        "interpolation": engine.meta.input.interpolation,
        "postprocess": engine.meta.postprocess,
        "rows": [],
    }
    for spinners in sorted({0, contend}):
        procs = [spin() for _ in range(spinners)]
        try:
            measured = time_stages(engine, sources, candidates, repeats)
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        for key, row in measured.items():
            side, fmt = key.split("-")
            size = int(np.median([len(e) for e in sources[key]]))
            out["rows"].append({"side": int(side), "format": fmt, "bytes": size, "spinners": spinners, **row})
    return out


def spin() -> subprocess.Popen:
    """A process that keeps one core busy: another job on the station's cores."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def table(result: dict[str, Any]) -> str:
    """A markdown table, one row per source size, format and number of busy processes:
    wall-clock median, thread-CPU median in brackets."""
    first = result["rows"][0]
    posts = [k for k in first["wall"] if k.startswith("post_")]
    head = ["source", "busy procs", "decode", "resize", "ONNX run"]
    for k in posts:
        over = first["over_floor"][k]
        head.append(f"post at the floor ({over} over)" if k == "post_floor" else f"post, {over} over floor")
    head.append("total at the floor")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        cells = [f"{r['side']} px {r['format'].upper()} ({r['bytes'] // 1024} KiB)", str(r["spinners"])]
        for k in ("decode", "resize", "run", *posts, "total_floor"):
            cells.append(f"{r['wall'][k]:.1f} ({r['cpu'][k]:.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zerodefect.latency", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bundle", type=Path, help="a detector bundle; default: build an untrained 320 px one"
    )
    parser.add_argument("--work", type=Path, default=Path("var/latency"), help="where the probe bundle goes")
    parser.add_argument("--size", type=int, default=320, help="input size of the built bundle")
    parser.add_argument("--sides", type=int, nargs="+", default=[200, 640], help="source image sides")
    parser.add_argument("--formats", nargs="+", default=["jpeg", "png"], choices=["jpeg", "png"])
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=["0", "30", "300", "floor"],
        help="scores over the floor per image to time post-processing with; 'floor': the bundle's",
    )
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--contend", type=int, default=0, help="repeat with this many busy processes")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    bundle = args.bundle
    if bundle is None:
        bundle = args.work / f"fcos-untrained-{args.size}"
        if not (bundle / "bundle.json").exists():
            build_untrained_bundle(bundle, args.size)
    candidates = [None if c == "floor" else int(c) for c in args.candidates]
    result = run(bundle, args.sides, args.formats, candidates, args.images, args.repeats, args.contend)
    result["command"] = "python -m zerodefect.latency " + " ".join(argv if argv is not None else sys.argv[1:])
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
