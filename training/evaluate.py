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
) -> dict[str, Any]:
    """Plant report for `split` of `manifest`; per-group breakdown by metadata keys."""
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
            "model": engine.meta.name,
            "run_id": engine.meta.run_id,
            "onnx_sha256": engine.meta.onnx_sha256,
            "quantization": engine.meta.quantization,
            "tta": engine.meta.tta,
            "trained_on_dataset_hash": engine.meta.dataset_hash,
            "manifest": manifest.name,
            "split": split,
            "target_escape_rate": engine.meta.target_escape_rate,
        }
    )
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


COMPARED = ("accuracy", "auroc", "f1", "escape_rate", "false_reject_rate")


def compare_reports(report: dict[str, Any], baseline: dict[str, Any], name: str) -> dict[str, Any]:
    """Each metric's change against a baseline bundle evaluated on the same images."""
    rows = {
        m: {"this": report[m], "baseline": baseline[m], "delta": report[m] - baseline[m]} for m in COMPARED
    }
    ref = "accuracy"
    rows["accuracy_at_0.5"] = {
        "this": report["at_threshold_0.5"][ref],
        "baseline": baseline["at_threshold_0.5"][ref],
        "delta": report["at_threshold_0.5"][ref] - baseline["at_threshold_0.5"][ref],
    }
    return {"bundle": name, "onnx_sha256": baseline["onnx_sha256"], "metrics": rows}


def write_report(report: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return path
