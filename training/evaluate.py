"""Evaluate a bundle the way the line will run it: through ONNX Runtime, at its threshold(s).

Evaluating the exported bundle, not the PyTorch checkpoint, means the report describes the
artefact that ships (including an INT8 variant), and the edge cannot do better or worse
than what was reported. The bundle's task decides the metrics; every task's report carries
the same plant block and the same bundle and latency fields.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from zerodefect.datasets.manifest import FOLDED_KEY, DatasetError, Manifest, Sample
from zerodefect.inference.bundle import BundleMeta, read_meta
from zerodefect.inference.engine import Engine
from zerodefect.training.report import Report


def evaluate_bundle(
    bundle: Path,
    manifest: Manifest,
    split: str = "test",
    group_by: list[str] | None = None,
    plots_dir: Path | None = None,
    threads: int | None = None,
    progress=None,
    timing_images: int = 50,
) -> Report:
    """The report that fits the bundle's task on `split` of `manifest`.

    `group_by` breaks a classifier's numbers down by metadata keys (default: the bundle's
    training group_by); `timing_images` test images measure the model-only latency on one
    core (0 skips it); `plots_dir` receives the task's plots.
    """
    from zerodefect.training.tasks import EvalRequest, get_task

    request = EvalRequest(bundle, manifest, split, group_by, plots_dir, threads, progress, timing_images)
    return get_task(read_meta(bundle).task).evaluate(request)


def split_samples(manifest: Manifest, split: str) -> list[Sample]:
    """The split's samples, refusing an empty split."""
    samples = manifest.split(split)
    if not samples:
        raise DatasetError(f"{manifest.name}: split {split!r} is empty")
    return samples


def default_group_by(meta: BundleMeta, samples: list[Sample]) -> list[str]:
    """The metadata keys a report breaks its numbers down by when none are asked for: the
    bundle's training group_by, plus the folded class (`defect_type`) when the samples carry
    it, so a good/defective model of folded classes reports escapes per defect type."""
    keys = list(meta.training.get("group_by", []))
    if FOLDED_KEY not in keys and any(FOLDED_KEY in s.meta for s in samples):
        keys.append(FOLDED_KEY)
    return keys


def refuse_unknown(manifest: Manifest, meta: BundleMeta, found: set[str], what: str = "labels") -> None:
    """Refuse a split naming classes the bundle has no output for."""
    unknown = sorted(found - set(meta.classes))
    if unknown:
        raise DatasetError(f"{manifest.name}: {what} {unknown} are unknown to bundle {meta.name}")


def bundle_fields(meta: BundleMeta, manifest: Manifest, split: str) -> dict[str, Any]:
    """What every report says about the bundle and the data it was evaluated on."""
    return {
        "model": meta.name,
        "run_id": meta.run_id,
        "onnx_sha256": meta.onnx_sha256,
        "quantization": meta.quantization,
        "trained_on_dataset_hash": meta.dataset_hash,
        "manifest": manifest.name,
        "split": split,
        "target_escape_rate": meta.target_escape_rate,
        "input_size": [meta.input.height, meta.input.width],
        "ms_per_image_1core": None,
    }


def add_latency(data: dict[str, Any], bundle: Path, paths: list[Path], timing_images: int) -> None:
    """The model-only latency on one core over the first `timing_images` paths (0 skips it)."""
    if timing_images:
        timing = latency_1core(bundle, paths[:timing_images])
        data["ms_per_image_1core"] = round(timing["median"], 2)
        data["ms_per_image_1core_p99"] = round(timing["p99"], 2)


def save_score_plots(
    plots_dir: Path,
    data: dict[str, Any],
    defective: np.ndarray,
    scores: np.ndarray,
    samples: list[Sample],
    title: str,
) -> None:
    """A single-score report's ROC, PR and confusion plots (listed in data["plots"]) and the
    scores per image (scores.npz), for every task that judges a part by one score."""
    from zerodefect.training.metrics import curves
    from zerodefect.training.plots import save_plots

    plots_dir.mkdir(parents=True, exist_ok=True)
    if data["auroc"] is not None:
        data["plots"] = [str(p) for p in save_plots(plots_dir, curves(defective, scores), data, title)]
    np.savez_compressed(
        plots_dir / "scores.npz",
        scores=scores,
        defective=defective,
        paths=np.array([s.path for s in samples]),
    )


def latency_1core(bundle: Path, paths: list[Path], repeats: int = 3) -> dict[str, float]:
    """Milliseconds per image on one ONNX Runtime thread at batch 1, resize and post-processing
    included (decoding excluded: the camera's format decides it). Median and p99."""
    from zerodefect.inference.preprocess import read_image

    engine = Engine.from_bundle(bundle, threads=1)
    images = [read_image(p) for p in paths]
    engine.predict(images[:2])
    times = []
    for _ in range(repeats):
        for image in images:
            tick = time.perf_counter()
            engine.predict([image])
            times.append((time.perf_counter() - tick) * 1000)
    return {"median": float(np.median(times)), "p99": float(np.percentile(times, 99)), "images": len(times)}


def _delta(this: float | None, base: float | None) -> float | None:
    return None if this is None or base is None else this - base


def compare_reports(report: Report, baseline: Report, name: str) -> dict[str, Any]:
    """Each headline metric's and plant rate's change against a baseline bundle evaluated on the
    same images (None where either side is undefined)."""
    names = [*report.headline, "escape_rate", "false_reject_rate"]
    rows = {
        m: {
            "this": report.metric(m),
            "baseline": baseline.metric(m),
            "delta": _delta(report.metric(m), baseline.metric(m)),
        }
        for m in names
    }
    this_05, base_05 = report.data.get("at_threshold_0.5"), baseline.data.get("at_threshold_0.5")
    if this_05 and base_05:
        rows["accuracy_at_0.5"] = {
            "this": this_05["accuracy"],
            "baseline": base_05["accuracy"],
            "delta": _delta(this_05["accuracy"], base_05["accuracy"]),
        }
    return {"bundle": name, "onnx_sha256": baseline.data["onnx_sha256"], "metrics": rows}
