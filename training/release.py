"""From trained weights to a verified bundle: calibrate on val with the model that ships,
export, and refuse the bundle unless ONNX Runtime reproduces PyTorch on those images.

The same steps for every task; the task decides the threshold(s), the outputs and the parity
measure (zerodefect.training.tasks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from zerodefect.datasets.manifest import Manifest
from zerodefect.inference.bundle import BundleMeta, InputSpec
from zerodefect.training.config import Config
from zerodefect.training.progress import progress_bar
from zerodefect.training.tasks import Calibration, ParityReport, Split, Task


def decode_splits(
    task: Task, cfg: Config, manifest: Manifest, console: Console, names: tuple[str, ...]
) -> list[Split]:
    """The named splits decoded once at the model's input size, under one progress bar."""
    splits = [manifest.split(n) for n in names]
    with progress_bar(console) as progress:
        bar = progress.add_task("decoding images", total=sum(len(s) for s in splits), info="")
        return [task.load_split(cfg, manifest, s, lambda n: progress.advance(bar, n)) for s in splits]


def calibrate_and_export(
    cfg: Config,
    task: Task,
    model: Any,
    manifest: Manifest,
    val: Split,
    bundle_dir: Path,
    run_id: str | None,
    dataset_hash: str,
    training_info: dict[str, Any],
    console: Console,
) -> tuple[Calibration, ParityReport]:
    """Calibrate the threshold(s) on val with the exact model that ships (TTA as exported),
    then export it with the parity check on the same images."""
    with console.status("calibrating the operating threshold(s) on the val split"):
        calibration = task.calibrate(cfg, manifest, model, val)
    console.print(calibration.summary)
    fields = task.bundle_fields(cfg, manifest, model, calibration)
    training = fields.pop("training")
    height, width = cfg.model.input_hw
    meta = BundleMeta(
        name=cfg.mlflow.registered_model or cfg.name,
        task=task.name,
        classes=manifest.classes,
        input=InputSpec(
            height=height,
            width=width,
            interpolation=cfg.model.interpolation,
            mean=list(model.offset.flatten().div(255).tolist()),
            std=list(model.scale.flatten().div(255).tolist()),
        ),
        target_escape_rate=cfg.calibration.target_escape_rate,
        run_id=run_id,
        dataset_hash=dataset_hash,
        training={**training, **training_info, "config": cfg.model_dump(mode="json")},
        **fields,
    )
    with console.status("exporting to ONNX and checking parity on the val split"):
        parity = task.export(cfg, model, meta, bundle_dir, val, calibration)
    console.print(parity.summary)
    return calibration, parity
