"""Evaluate a bundle the way the line will run it: through ONNX Runtime, at its threshold.

Evaluating the exported bundle, not the PyTorch checkpoint, means the report describes the
artefact that ships (including an INT8 variant), and the edge cannot do better or worse
than what was reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.inference.engine import Engine
from zerodefect.inference.postprocess import above
from zerodefect.training.metrics import curves, plant_report
from zerodefect.training.plots import save_plots


def evaluate_bundle(
    bundle: Path,
    manifest: Manifest,
    split: str = "test",
    group_by: list[str] | None = None,
    plots_dir: Path | None = None,
    threads: int | None = None,
    progress=None,
    timing_images: int = 50,
) -> dict[str, Any]:
    """Plant report for `split` of `manifest`; per-group breakdown by metadata keys.

    Like a detector's, it carries the model-only latency on one core (`ms_per_image_1core`,
    over `timing_images` test images; 0 skips it) so every task reports the same plant fields.
    """
    engine = Engine.from_bundle(bundle, threads=threads)
    samples = manifest.split(split)
    if not samples:
        raise DatasetError(f"{manifest.name}: split {split!r} is empty")
    unknown = sorted({lab for s in samples for lab in s.labels} - set(engine.meta.classes))
    if unknown:
        raise DatasetError(f"{manifest.name}: labels {unknown} are unknown to bundle {engine.meta.name}")
    probabilities = engine.score_files([manifest.resolve(s) for s in samples], progress=progress)
    scores = engine.defect_scores(probabilities)
    defective = np.array([manifest.is_defective(s) for s in samples])
    if group_by is None:
        group_by = list(engine.meta.training.get("group_by", []))
    groups = {key: np.array([str(s.meta.get(key)) for s in samples]) for key in group_by}
    report = plant_report(defective, scores, engine.meta.threshold, groups)
    report.update(
        {
            "task": "classification",
            "model": engine.meta.name,
            "run_id": engine.meta.run_id,
            "onnx_sha256": engine.meta.onnx_sha256,
            "quantization": engine.meta.quantization,
            "tta": engine.meta.tta,
            "trained_on_dataset_hash": engine.meta.dataset_hash,
            "manifest": manifest.name,
            "split": split,
            "target_escape_rate": engine.meta.target_escape_rate,
            "input_size": [engine.meta.input.height, engine.meta.input.width],
            "ms_per_image_1core": None,
        }
    )
    if timing_images:
        timing = latency_1core(bundle, [manifest.resolve(s) for s in samples[:timing_images]])
        report["ms_per_image_1core"] = round(timing["median"], 2)
        report["ms_per_image_1core_p99"] = round(timing["p99"], 2)
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        if report["auroc"] is not None:
            report["plots"] = [
                str(p) for p in save_plots(plots_dir, curves(defective, scores), report, engine.meta.name)
            ]
        np.savez_compressed(
            plots_dir / "scores.npz",
            scores=scores,
            defective=defective,
            paths=np.array([s.path for s in samples]),
        )
    return report


def latency_1core(bundle: Path, paths: list[Path], repeats: int = 3) -> dict[str, float]:
    """Milliseconds per image on one ONNX Runtime thread at batch 1, resize and post-processing
    included (decoding excluded: the camera's format decides it). Median and p99."""
    import time

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


def evaluate_detector_bundle(
    bundle: Path,
    manifest: Manifest,
    split: str = "test",
    plots_dir: Path | None = None,
    threads: int | None = None,
    progress=None,
    timing_images: int = 50,
) -> dict[str, Any]:
    """COCO mAP, per-class AP and the part-level plant numbers of a detector bundle."""
    from zerodefect.training.detection import draw_samples, save_pr_curves, truth_for
    from zerodefect.training.detection_metrics import coco_map, part_report

    engine = Engine.from_bundle(bundle, threads=threads)
    meta = engine.meta
    samples = manifest.split(split)
    if not samples:
        raise DatasetError(f"{manifest.name}: split {split!r} is empty")
    unknown = sorted({b.label for s in samples for b in s.boxes} - set(meta.classes))
    if unknown:
        raise DatasetError(f"{manifest.name}: box classes {unknown} are unknown to bundle {meta.name}")
    paths = [manifest.resolve(s) for s in samples]
    detections, sizes = engine.detect_files(paths, progress=progress)
    truths = [truth_for(manifest, s, size) for s, size in zip(samples, sizes, strict=True)]
    scores = coco_map(truths, detections, meta.classes)
    thresholds = engine.class_thresholds()
    plant = part_report(truths, detections, thresholds)
    report: dict[str, Any] = {
        "task": "detection",
        "map50": scores["map50"],
        "map50_95": scores["map50_95"],
        "per_class_ap": scores["per_class_ap"],
        "per_class_ap50_95": scores["per_class_ap50_95"],
        **plant,
        "class_thresholds": dict(zip(meta.classes, thresholds.tolist(), strict=True)),
        "ms_per_image_1core": None,
        "model": meta.name,
        "run_id": meta.run_id,
        "onnx_sha256": meta.onnx_sha256,
        "quantization": meta.quantization,
        "input_size": [meta.input.height, meta.input.width],
        "trained_on_dataset_hash": meta.dataset_hash,
        "manifest": manifest.name,
        "split": split,
        "target_escape_rate": meta.target_escape_rate,
    }
    if timing_images:
        timing = latency_1core(bundle, paths[:timing_images])
        report["ms_per_image_1core"] = round(timing["median"], 2)
        report["ms_per_image_1core_p99"] = round(timing["p99"], 2)
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
        from zerodefect.inference.preprocess import read_image

        shown = _spread(samples, 12)
        sheets = draw_samples(
            plots_dir / "samples",
            [read_image(paths[i]) for i in shown],
            [truths[i] for i in shown],
            [above(detections[i], thresholds) for i in shown],
            meta.classes,
            [samples[i].path for i in shown],
        )
        report["plots"] = [str(save_pr_curves(plots_dir, scores, meta.name))] + [str(p) for p in sheets]
    return report


def evaluate_any(
    bundle: Path, manifest: Manifest, split: str = "test", plots_dir: Path | None = None, timing: bool = True
) -> dict[str, Any]:
    """The report that fits the bundle's task: plant report for classifiers, mAP and part-level
    rates for detectors."""
    from zerodefect.inference.bundle import read_meta

    timing_images = 50 if timing else 0
    if read_meta(bundle).task == "detection":
        return evaluate_detector_bundle(bundle, manifest, split, plots_dir, timing_images=timing_images)
    return evaluate_bundle(bundle, manifest, split, None, plots_dir, timing_images=timing_images)


def _spread(samples: list, count: int) -> list[int]:
    """Indices of up to `count` samples, one class after another, for sample sheets."""
    by_label: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_label.setdefault(s.labels[0] if s.labels else "clean", []).append(i)
    picked: list[int] = []
    while len(picked) < min(count, len(samples)):
        for members in by_label.values():
            if members and len(picked) < count:
                picked.append(members.pop(0))
    return picked


COMPARED = ("accuracy", "auroc", "f1", "escape_rate", "false_reject_rate")


def _delta(this: float | None, base: float | None) -> float | None:
    return None if this is None or base is None else this - base


def compare_reports(report: dict[str, Any], baseline: dict[str, Any], name: str) -> dict[str, Any]:
    """Each metric's change against a baseline bundle evaluated on the same images (None where
    either side is undefined)."""
    rows = {
        m: {"this": report[m], "baseline": baseline[m], "delta": _delta(report[m], baseline[m])}
        for m in COMPARED
    }
    ref = "accuracy"
    rows["accuracy_at_0.5"] = {
        "this": report["at_threshold_0.5"][ref],
        "baseline": baseline["at_threshold_0.5"][ref],
        "delta": _delta(report["at_threshold_0.5"][ref], baseline["at_threshold_0.5"][ref]),
    }
    return {"bundle": name, "onnx_sha256": baseline["onnx_sha256"], "metrics": rows}


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
