"""Training configuration: YAML, validated by pydantic, with `key.path=value` overrides.

A typo in a config is an error naming the key, never a silently ignored setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zerodefect.configfile import load_yaml_model
from zerodefect.inference.bundle import Tiling


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and the key."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitSpec(Strict):
    # A CSV (split,image) naming every image's split, e.g. a committed one two models are
    # compared on; the fractions below are then unused.
    file: Path | None = None
    test: float = 0.2
    val: float = 0.1
    seed: int = 0
    stratify_on: list[str] = Field(default_factory=list)


class ImportSpec(Strict):
    """How to build the manifest when it does not exist yet."""

    format: Literal["folders", "elpv", "voc", "coco", "yolo", "yolo-seg", "mvtec", "masks"]
    args: dict[str, Any] = Field(default_factory=dict)
    split: SplitSpec = Field(default_factory=SplitSpec)


class DataConfig(Strict):
    manifest: Path
    source: ImportSpec | None = None
    # Metadata key holding an expert's defect probability, for soft-label training.
    soft_label_key: str | None = None
    # Metadata keys to break evaluation down by (e.g. ELPV's cell type).
    group_by: list[str] = Field(default_factory=list)


class DetectorConfig(Strict):
    """FCOS on a Lite0 feature pyramid (zerodefect.models.detector); unused by classifiers."""

    fpn_channels: int = Field(default=64, ge=32)
    head_convs: int = Field(default=4, ge=1)
    # Post-processing, carried into the bundle: candidates below score_thresh are dropped,
    # the best topk_candidates per level go through class-wise NMS at nms_thresh.
    score_thresh: float = 0.05
    nms_thresh: float = 0.6
    topk_candidates: int = 1000
    # The quality record keeps at most 200 defects per part.
    detections_per_img: int = Field(default=100, ge=1, le=200)


class AnomalyConfig(Strict):
    """PatchCore on Lite0 features (zerodefect.models.patchcore); unused by other tasks."""

    # patchcore: nearest neighbour in a coreset memory bank; padim: per-position mean and
    # variance of the same features (zerodefect.models.padim), cheaper, coreset_ratio unused.
    method: Literal["patchcore", "padim"] = "patchcore"
    # Share of good-part patches kept in the memory bank (greedy coreset): 1 % measured
    # ~7 ms kNN per image at 224 px (docs: measured facts); 1.0 keeps every patch.
    coreset_ratio: float = Field(default=0.01, gt=0, le=1)
    # Patch features are averaged over this many neighbours per side (PatchCore's local
    # aggregation), and the upsampled heatmap is smoothed by a Gaussian of this sigma (pixels).
    neighbourhood: int = Field(default=3, ge=1)
    sigma: float = Field(default=4.0, gt=0)
    # Heatmap regions smaller than this (input pixels) are not reported as defects.
    min_region_pixels: int = Field(default=4, ge=1)


class ModelConfig(Strict):
    arch: str = "tf_efficientnet_lite0"
    pretrained: str | None = "imagenet"
    # Pixels the model sees: one number for a square input, or [height, width] for parts far
    # from square (a 500 x 1,250 px commutator squashed to a square loses its thin cracks).
    input_size: int | tuple[int, int] = 224
    interpolation: Literal["area", "linear", "cubic", "nearest"] = "area"
    drop_rate: float = 0.2
    detector: DetectorConfig = Field(default_factory=lambda: DetectorConfig())
    # Detectors only: train on tiles of `tile` px of the original image (overlap 0..0.5) and
    # score frames tile by tile, boxes merged (zerodefect.inference.tiling); null = whole frames.
    tiling: Tiling | None = None
    anomaly: AnomalyConfig = Field(default_factory=lambda: AnomalyConfig())

    @field_validator("input_size")
    @classmethod
    def _positive(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        if min(value if isinstance(value, tuple) else (value,)) < 16:
            raise ValueError(f"input_size {value}: at least 16 px a side")
        return value

    @property
    def input_hw(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        size = self.input_size
        return size if isinstance(size, tuple) else (size, size)


class TrainConfig(Strict):
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.02
    # Learning-rate warm-up: this share of the schedule, but at most max_warmup_epochs, so a
    # longer schedule does not warm up for longer (zerodefect.training.train.warmup_steps).
    warmup_pct: float = Field(default=0.15, ge=0, lt=1)
    max_warmup_epochs: float = Field(default=1.0, gt=0)
    # Weights are averaged (EMA) with this final decay; None trains without EMA. The decay warms
    # up with the number of updates, decay * (1 - exp(-updates / ema_tau)); ema_tau None derives
    # it from the decay (zerodefect.training.train.ema_tau: 161 updates for 0.998).
    ema_decay: float | None = Field(default=None, ge=0, lt=1)
    ema_tau: float | None = Field(default=None, gt=0)
    class_weighting: Literal["none", "balanced", "sqrt"] = "none"
    label_smoothing: float = 0.0
    # Epochs without a better val score before training stops; they count only in the second
    # half of the schedule (zerodefect.training.train.counts_for_early_stop).
    early_stopping_patience: int = 5
    # Clip the gradient norm (detectors: early FCOS steps can spike); None leaves it alone.
    grad_clip: float | None = None
    # Leading backbone stages (stem first) kept at their pretrained weights; 0 trains everything.
    freeze_stages: int = Field(default=0, ge=0)
    seed: int = 0
    # torch's intra-op threads; None keeps torch's default (one per core). On a machine shared
    # with other work, 1 thread, or OMP_WAIT_POLICY=PASSIVE (the default zerodefect sets),
    # keeps waiting threads from spinning on a core another process needs (README, Training).
    threads: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Without a terminal (nohup, CI, a log file), a plain progress line every this many seconds.
    log_every_seconds: float = Field(default=20.0, gt=0)


class CalibrationConfig(Strict):
    # The largest share of defective parts the line may pass, measured on the val split.
    target_escape_rate: float = 0.05
    # Anomaly models whose val split has no defective part: the largest share of good val
    # parts the line may reject instead (the only rate good parts alone can calibrate).
    target_false_reject_rate: float = Field(default=0.01, ge=0, le=1)


class ExportConfig(Strict):
    tta: Literal["none", "flips", "dihedral"] = "none"
    opset: int = 17
    parity_atol: float = 1e-4


class GateConfig(Strict):
    """Absolute floors a version must meet to become @champion, with or without a champion.

    They travel inside the bundle (its training config), so `models promote` holds each version
    to the floors it was trained for. Metrics that do not apply to a task are ignored: AUROC for
    classifiers, mAP@0.5 for detectors; rates are measured at the calibrated threshold(s) on the
    gate's test split. The defaults refuse a model no better than chance: a chance model that
    meets an escape target must reject most good parts too.
    """

    min_auroc: float = Field(default=0.75, ge=0, le=1)
    min_map50: float = Field(default=0.30, ge=0, le=1)
    min_image_auroc: float = Field(default=0.75, ge=0, le=1)
    max_escape_rate: float = Field(default=0.20, ge=0, le=1)
    max_false_reject_rate: float = Field(default=0.50, ge=0, le=1)

    def floor(self, metric: str) -> float:
        """The floor of a gate metric, by the metric's report name."""
        return {
            "auroc": self.min_auroc,
            "map50": self.min_map50,
            "image_auroc": self.min_image_auroc,
            "escape_rate": self.max_escape_rate,
            "false_reject_rate": self.max_false_reject_rate,
        }[metric]


class MlflowConfig(Strict):
    experiment: str = "zerodefect"
    registered_model: str | None = None
    alias: str = "challenger"


class Config(Strict):
    name: str
    task: Literal["classification", "detection", "anomaly"] = "classification"
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    augment: list[dict[str, Any]] = Field(default_factory=list)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    mlflow: MlflowConfig = Field(default_factory=MlflowConfig)

    @model_validator(mode="after")
    def _square_detector(self) -> Config:
        height, width = self.model.input_hw
        if self.task == "detection" and height != width:
            raise ValueError(
                f"model.input_size {list(self.model.input_hw)}: the detector takes a square input"
            )
        if self.model.tiling is not None and self.task != "detection":
            raise ValueError(f"model.tiling: tiles are for detectors, not a {self.task} task")
        return self


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply `a.b.c=value` (value parsed as YAML) to a nested dict."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} is not KEY=VALUE")
    key, value = override.split("=", 1)
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part} is not a section")
    node[parts[-1]] = yaml.safe_load(value)


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a YAML config, apply overrides, validate."""

    def apply(data: dict[str, Any]) -> None:
        for override in overrides or []:
            apply_override(data, override)

    return load_yaml_model(path, Config, ConfigError, apply)
