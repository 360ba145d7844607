"""The task interface: what a task (classification, detection, next anomaly) supplies to the
one training pipeline, the one evaluation and the promotion gate.

A new task is one module here implementing `Task`, registered in `TASKS`
(zerodefect.training.tasks), plus one inference head on the station side and a config section.
Everything else (run folders, MLflow, progress, export, registration) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from rich.table import Table

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.training.config import Config
from zerodefect.training.report import Report


@dataclass
class Split:
    """One split decoded for training: samples, uint8 [N, S, S, 3] images at the model's input
    size, and the task's truth for them (defective flags, or boxes in input pixels)."""

    samples: list[Sample]
    images: np.ndarray
    truth: Any
    # A tiled detector's split: `images` are the views (tiles), `truth` their boxes, and this
    # (zerodefect.training.detection.TileLayout) maps them back to the images.
    layout: Any = None


@dataclass
class Calibration:
    """The operating point chosen on val with the model that ships, and the torch predictions it
    was chosen from (the export's parity reference)."""

    # {"threshold": t} for a single score; one entry per class for detectors.
    thresholds: dict[str, float]
    val_report: dict[str, Any]
    predictions: Any
    summary: str


@dataclass
class ParityReport:
    """ONNX Runtime against PyTorch on the val images, for every task.

    `differing` counts what the line would decide differently (parts, or images whose
    detections over threshold differ); `fields` are the task's measures, as written in the
    report's `parity` block.
    """

    images: int
    differing: int
    ok: bool
    fields: dict[str, Any]
    summary: str

    def to_json(self) -> dict[str, Any]:
        return {"images": self.images, **self.fields}


@dataclass
class FitJob:
    """What a task's training step gets: the model, the decoded splits, the run folder (its
    checkpoints, for --resume) and the progress callbacks."""

    cfg: Config
    model: Any
    manifest: Manifest
    train: Split
    val: Split
    run_dir: Path
    augment: Any = None
    resume: bool = False
    on_batch: Callable[[float], None] | None = None
    on_epoch: Callable[[dict[str, Any]], None] | None = None


@dataclass
class EvalRequest:
    """A bundle to evaluate on one split: `group_by` metadata keys break the numbers down
    (default: the bundle's training group_by), `timing_images` measure the 1-core latency
    (0 skips it), `plots_dir` receives the task's plots."""

    bundle: Path
    manifest: Manifest
    split: str = "test"
    group_by: list[str] | None = None
    plots_dir: Path | None = None
    threads: int | None = None
    progress: Callable[[int], None] | None = None
    timing_images: int = 50


class Task(Protocol):
    """One task's part of training, export, evaluation and the gate."""

    name: str
    # The validation score `fit` keeps the best weights by, and the gate's headline metric.
    headline_metric: str
    headline_label: str
    # A best val headline at or under this means the run learned nothing (health check).
    chance: float
    # Augmentations move boxes with the pixels.
    has_boxes: bool
    # `fit` is one pass over the data (no epochs, optimizer, loss or EMA): the pre-flight's
    # schedule warnings and the early-stop check (training/health.py) do not apply, and
    # `train --nproc` refuses it (DDP averages gradients; training/distributed.py).
    one_pass: bool
    # metric -> higher is better: what the promotion gate compares.
    gate_metrics: dict[str, bool]
    # Static INT8 quantization (zerodefect quantize) keeps this task's accuracy.
    int8: bool

    def check_manifest(self, cfg: Config, manifest: Manifest) -> None:
        """Refuse (DatasetError) a manifest this task cannot train or calibrate on."""

    def build_model(self, cfg: Config, manifest: Manifest, pretrained: str | None) -> tuple[Any, Any]:
        """(model, pretrained-weights report) from the config's model section."""

    def load_split(
        self, cfg: Config, manifest: Manifest, samples: list[Sample], progress: Callable[[int], None] | None
    ) -> Split:
        """Decode a split once, at the model's input size, with its truth."""

    def label_counts(self, manifest: Manifest, samples: list[Sample]) -> dict[str, int]:
        """Training examples per class, for the pre-flight."""

    def boxes_at_input(self, train: Split) -> list[np.ndarray] | None:
        """Training boxes as the model sees them (pre-flight), or None for a task without boxes."""

    def fit(self, job: FitJob) -> Any:
        """Train, keeping the best weights by the val headline: a FitResult. The shared `fit` loop
        of zerodefect.training.train, or the task's own (a one-pass model)."""

    def predict(self, model: Any, images: np.ndarray) -> Any:
        """Torch predictions on prepared images, on the CPU, as the bundle will be judged."""

    def calibrate(self, cfg: Config, manifest: Manifest, model: Any, val: Split) -> Calibration:
        """The operating threshold(s) on val with the exact model that ships."""

    def bundle_fields(self, cfg: Config, manifest: Manifest, model: Any, calibration: Calibration) -> dict:
        """The task's BundleMeta fields: outputs, threshold(s), post-processing, good class, arch."""

    def export(
        self, cfg: Config, model: Any, meta: Any, folder: Path, val: Split, calibration: Calibration
    ) -> ParityReport:
        """Write the signed bundle only if ONNX Runtime reproduces torch on val (ExportParityError)."""

    def recalibrate(self, bundle: Path, manifest: Manifest, target_escape_rate: float) -> dict[str, Any]:
        """BundleMeta updates that recalibrate a changed graph (an INT8 copy) on val."""

    def evaluate(self, request: EvalRequest) -> Report:
        """The bundle through ONNX Runtime at its threshold(s) on `split`: the typed report."""

    def report_from_json(self, data: dict[str, Any]) -> Report:
        """The typed view of a report this task wrote."""

    def val_summary(self, val_report: dict[str, Any]) -> dict[str, Any]:
        """What the report keeps of the val split at the calibrated threshold(s)."""

    def run_metrics(self, report: Report) -> dict[str, float | None]:
        """The task's own MLflow metrics of a finished run (beyond the shared test rates)."""

    def summary_rows(self, report: Report) -> list[tuple[str, float | None]]:
        """The rows of the printed report's metric table."""

    def detail_tables(self, report: Report) -> list[Table]:
        """Further printed tables (per group, per class)."""
