"""`zerodefect train`: data check, training, calibration, export, evaluation, registration.

One command takes labeled images to a registered, verified bundle, and every step leaves its
numbers in one MLflow run: parameters, per-epoch metrics, the dataset hash, plots, the report
and the bundle.
"""

from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.console import Console

from zerodefect.datasets.importers import IMPORTERS
from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.datasets.splits import assign_splits
from zerodefect.datasets.validate import validate
from zerodefect.formatting import fmt_rate
from zerodefect.inference.bundle import BundleMeta, InputSpec, update_meta
from zerodefect.settings import Settings, get_settings
from zerodefect.training.config import Config
from zerodefect.training.health import Preflight, TrainingFailed, check_run, preflight
from zerodefect.training.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    run_dir: Path
    bundle_dir: Path
    report_path: Path
    report: dict[str, Any]
    run_id: str
    model_name: str | None
    version: str | None
    train_seconds: float


def prepare_manifest(cfg: Config, extra_data: Path | None = None) -> Manifest:
    """Read the config's manifest, importing and splitting it first if it does not exist."""
    path = cfg.data.manifest
    if not path.exists():
        if cfg.data.source is None:
            raise DatasetError(f"{path}: manifest not found and the config has no data.source to import")
        source = cfg.data.source
        manifest = IMPORTERS[source.format](**source.args)
        split = source.split
        assign_splits(manifest, split.test, split.val, split.seed, split.stratify_on, keep_existing=True)
        manifest.write(path)
        log.info("imported %s: %d images -> %s", source.format, len(manifest.samples), path)
    manifest = Manifest.read(path)
    if extra_data is not None:
        manifest = manifest.merged(Manifest.read(extra_data))
    return manifest


def new_run_dir(settings: Settings, name: str, resume: bool | Path) -> Path:
    """A fresh run folder, or with resume the given one / the newest unfinished one."""
    base = settings.data_dir / "runs" / name
    if isinstance(resume, Path):
        return resume
    if resume:
        unfinished = sorted(
            p for p in base.glob("*") if (p / "last.pt").exists() and not (p / "summary.json").exists()
        )
        if unfinished:
            return unfinished[-1]
        log.warning("nothing to resume under %s; starting a new run", base)
    run_dir = base / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def calibrate_and_export(
    cfg: Config,
    model,
    manifest: Manifest,
    val_images: np.ndarray,
    val_defective: np.ndarray,
    bundle_dir: Path,
    run_id: str | None,
    dataset_hash: str,
    training_info: dict[str, Any],
    console: Console,
):
    """Calibrate the threshold on val with the exact model that ships (TTA as exported), then
    export it, refusing the bundle unless ONNX Runtime reproduces PyTorch on those images.

    Returns (threshold, val report at that threshold, parity report).
    """
    import torch

    from zerodefect.training.export import export_bundle
    from zerodefect.training.metrics import binary_report, calibrate_threshold
    from zerodefect.training.train import defect_scores, predict

    good_index = manifest.classes.index(manifest.good_class) if manifest.good_class else None
    model.tta = cfg.export.tta
    model.cpu().eval()
    with console.status("calibrating the operating threshold on the val split"):
        val_probs = predict(model, val_images, torch.device("cpu"))
        val_scores = defect_scores(val_probs, good_index)
        threshold = calibrate_threshold(val_defective, val_scores, cfg.calibration.target_escape_rate)
    val_report = binary_report(val_defective, val_scores, threshold)
    console.print(
        f"threshold {threshold:.4f}: val escape rate {fmt_rate(val_report['escape_rate'], 3)}, "
        f"false-reject rate {fmt_rate(val_report['false_reject_rate'], 3)}"
    )
    size = cfg.model.input_size
    meta = BundleMeta(
        name=cfg.mlflow.registered_model or cfg.name,
        task=cfg.task,
        classes=manifest.classes,
        good_class=manifest.good_class,
        input=InputSpec(
            height=size,
            width=size,
            interpolation=cfg.model.interpolation,
            mean=list(model.offset.flatten().div(255).tolist()),
            std=list(model.scale.flatten().div(255).tolist()),
        ),
        outputs={"probabilities": "[N, C] class probabilities, classes in bundle order"},
        threshold=threshold,
        target_escape_rate=cfg.calibration.target_escape_rate,
        tta=cfg.export.tta,
        run_id=run_id,
        dataset_hash=dataset_hash,
        training={
            "arch": cfg.model.arch,
            "group_by": cfg.data.group_by,
            **training_info,
            "config": cfg.model_dump(mode="json"),
        },
    )
    with console.status("exporting to ONNX and checking parity on the val split"):
        parity = export_bundle(
            model, meta, bundle_dir, val_images, val_probs, cfg.export.opset, cfg.export.parity_atol
        )
    console.print(
        f"export parity on {parity.images} val images: max |dp| {parity.max_abs_diff:.2e}, "
        f"decisions identical: {parity.decisions_equal}"
    )
    return threshold, val_report, parity


def export_run(
    run_dir: Path,
    out: Path | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
) -> Path:
    """`zerodefect export`: re-export a finished or interrupted run's best weights.

    Uses the run's saved config (with overrides such as export.tta=dihedral or
    calibration.target_escape_rate=0.02), recalibrates on val and checks parity again.
    """
    import torch

    from zerodefect.models.classifier import build_classifier
    from zerodefect.training.config import load_config
    from zerodefect.training.data import load_images

    console = console or Console()
    best = run_dir / "best.pt"
    if not best.is_file():
        raise DatasetError(f"{run_dir}: no best.pt; is this a training run folder?")
    cfg = load_config(run_dir / "config.yaml", overrides)
    manifest = Manifest.read(run_dir / "manifest.jsonl")
    check = validate(manifest)
    run_id_file = run_dir / "mlflow_run_id"
    run_id = run_id_file.read_text().strip() if run_id_file.exists() else None
    bundle_dir = out or run_dir / "bundle"
    state = torch.load(best, map_location="cpu", weights_only=False)
    info = {"best_epoch": state["epoch"] + 1, "exported_from": str(run_dir)}
    if cfg.task == "detection":
        from zerodefect.training.detection_pipeline import (
            build_from_config,
            calibrate_and_export_detector,
            load_split_data,
        )

        model, _ = build_from_config(cfg, manifest.classes, None)
        model.load_state_dict(state["model"])
        ((val_images, val_truths),) = load_split_data(cfg, manifest, console, ("val",))
        calibrate_and_export_detector(
            cfg,
            model,
            manifest,
            val_images,
            val_truths,
            bundle_dir,
            run_id,
            check.dataset_hash,
            info,
            console,
        )
        return bundle_dir
    model, _ = build_classifier(
        cfg.model.arch,
        manifest.classes,
        manifest.good_class,
        None,
        soft_labels=cfg.data.soft_label_key is not None,
        drop_rate=cfg.model.drop_rate,
    )
    model.load_state_dict(state["model"])
    val_s = manifest.split("val")
    val_images = load_images(manifest, val_s, cfg.model.input_size, cfg.model.interpolation)
    val_defective = np.array([manifest.is_defective(s) for s in val_s])
    calibrate_and_export(
        cfg,
        model,
        manifest,
        val_images,
        val_defective,
        bundle_dir,
        run_id,
        check.dataset_hash,
        info,
        console,
    )
    return bundle_dir


@contextmanager
def epoch_progress(console: Console, epochs: int, steps_per_epoch: int, every_seconds: float = 20.0):
    """A training progress bar (timed plain lines without a terminal); yields (on_batch,
    on_epoch) callbacks for `fit`. Each epoch's validation metrics are printed and logged to
    the active MLflow run."""
    import mlflow

    with progress_bar(console, every_seconds) as progress:
        task = progress.add_task("training", total=epochs * steps_per_epoch, info="")
        state = {"loss": None}

        def on_batch(loss: float) -> None:
            state["loss"] = loss if state["loss"] is None else 0.9 * state["loss"] + 0.1 * loss
            progress.update(task, advance=1, info=f"loss {state['loss']:.4f}")

        def on_epoch(row: dict[str, Any]) -> None:
            shown = "  ".join(
                f"{k} {v:.4f}"
                for k, v in row.items()
                if k not in ("epoch", "seconds", "lr") and v is not None
            )
            progress.console.print(f"epoch {row['epoch']:>3}  {shown}  {row['seconds']:.0f}s")
            progress.update(task, completed=row["epoch"] * steps_per_epoch)
            mlflow.log_metrics(
                {k: v for k, v in row.items() if k != "epoch" and v is not None}, step=row["epoch"]
            )

        yield on_batch, on_epoch


def announce_preflight(
    cfg: Config,
    manifest: Manifest,
    steps_per_epoch: int,
    console: Console,
    boxes_at_input: list[np.ndarray] | None = None,
) -> Preflight:
    """Print the schedule's numbers once before the first step, with what looks wrong in them."""
    pre = preflight(cfg, manifest, manifest.split("train"), steps_per_epoch, boxes_at_input)
    console.print(pre.summary(), highlight=False, soft_wrap=True)
    for warning in pre.warnings:
        console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    return pre


def refuse_failed_run(cfg: Config, result, pre: Preflight, run_dir: Path) -> None:
    """Stop a collapsed run before export and registration (TrainingFailed), leaving its files
    and a failure.json in the run folder, and the reason on its MLflow run."""
    import mlflow

    try:
        check_run(cfg, result, pre, run_dir)
    except TrainingFailed as exc:
        (run_dir / "failure.json").write_text(
            json.dumps(
                {"what": exc.what, "causes": exc.causes, "history": result.history}, indent=2, default=str
            )
        )
        mlflow.set_tag("failure", exc.what[:500])
        mlflow.log_text(str(exc), "failure.txt")
        raise


def start_mlflow_run(
    cfg: Config,
    run_dir: Path,
    check,
    settings: Settings,
    config_path: Path | None,
    extra_data: Path | None,
    weights,
):
    """Start (or, for a resumed run folder, reopen) the run's MLflow run and log its inputs."""
    import mlflow

    from zerodefect.settings import configure_mlflow
    from zerodefect.training.registry import experiment_id, flatten
    from zerodefect.training.train import select_device

    configure_mlflow(settings)
    run_id_file = run_dir / "mlflow_run_id"
    existing = run_id_file.read_text().strip() if run_id_file.exists() else None
    run = mlflow.start_run(
        run_id=existing,
        experiment_id=None if existing else experiment_id(cfg.mlflow.experiment, settings),
        run_name=f"{cfg.name}-{run_dir.name}",
    )
    run_id_file.write_text(run.info.run_id)
    if existing:
        return run
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(cfg.model_dump(mode="json")).items()})
        mlflow.set_tags(
            {
                "dataset_hash": check.dataset_hash,
                "manifest": str(cfg.data.manifest.resolve()),
                "task": cfg.task,
                "config": str(config_path or ""),
                "extra_data": str(extra_data or ""),
                "device": str(select_device(cfg.train.device)),
                "pretrained_tensors": str(weights.matched if weights else 0),
            }
        )
        mlflow.log_text(json.dumps(check.counts, indent=2), "dataset/counts.json")
        mlflow.log_artifact(str(run_dir / "manifest.jsonl"), "dataset")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    return run


def register_and_summarize(
    cfg: Config,
    run_id: str,
    check,
    bundle_dir: Path,
    report_path: Path,
    report: dict[str, Any],
    run_dir: Path,
    console: Console,
) -> str | None:
    """Log the bundle, register it under the config's alias, and mark the run folder finished."""
    import mlflow

    from zerodefect.training.registry import register_bundle

    mlflow.log_artifacts(str(bundle_dir), "bundle")
    version = None
    if cfg.mlflow.registered_model:
        headline = (
            {"test_map50": fmt_rate(report["map50"])}
            if cfg.task == "detection"
            else {"test_auroc": fmt_rate(report["auroc"])}
        )
        escape = report.get("escape_rate")
        version = register_bundle(
            run_id,
            cfg.mlflow.registered_model,
            cfg.mlflow.alias,
            {
                "dataset_hash": check.dataset_hash,
                "manifest": str(cfg.data.manifest.resolve()),
                **headline,
                "test_escape_rate": fmt_rate(escape),
            },
        )
        console.print(
            f"registered [bold]{cfg.mlflow.registered_model}[/] version {version} as @{cfg.mlflow.alias}"
        )
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "bundle": str(bundle_dir),
                "report": str(report_path),
                "version": version,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
    )
    return version


def run_training(
    cfg: Config,
    config_path: Path | None = None,
    resume: bool | Path = False,
    extra_data: Path | None = None,
    settings: Settings | None = None,
    console: Console | None = None,
) -> TrainOutcome:
    """Train, calibrate on val, export with parity, evaluate on test, log and register."""
    import mlflow

    from zerodefect.datasets.augment import build_augmentations
    from zerodefect.models.classifier import build_classifier
    from zerodefect.training.evaluate import evaluate_bundle, write_report
    from zerodefect.training.train import fit_classifier, seed_everything

    settings = settings or get_settings()
    console = console or Console()
    manifest = prepare_manifest(cfg, extra_data)
    with console.status("validating dataset (every image is opened once)"):
        check = validate(manifest)
    console.print(
        f"dataset [bold]{manifest.name}[/]: {check.images} images, hash {check.dataset_hash[:12]}, {check.counts}"
    )
    train_s, val_s = manifest.split("train"), manifest.split("val")
    if not train_s or not val_s:
        raise DatasetError(f"{cfg.data.manifest}: needs non-empty train and val splits")

    run_dir = new_run_dir(settings, cfg.name, resume)
    # The run folder keeps what it was trained from, so `zerodefect export` can redo its bundle.
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    manifest.write(run_dir / "manifest.jsonl")
    if cfg.task == "detection":
        from zerodefect.training.detection_pipeline import run_detection_training

        return run_detection_training(
            cfg, manifest, check, run_dir, config_path, resume, extra_data, settings, console
        )
    augment = build_augmentations(cfg.augment, cfg.task)
    # The new head's initial weights come from torch's global RNG: seed it first, or the run
    # depends on whatever drew random numbers earlier in the process.
    seed_everything(cfg.train.seed)
    model, weights = build_classifier(
        cfg.model.arch,
        manifest.classes,
        manifest.good_class,
        cfg.model.pretrained,
        soft_labels=cfg.data.soft_label_key is not None,
        drop_rate=cfg.model.drop_rate,
    )
    good_index = manifest.classes.index(manifest.good_class) if manifest.good_class else None

    from zerodefect.training.data import load_images, targets_for

    size = cfg.model.input_size
    with progress_bar(console) as progress:
        task = progress.add_task("decoding images", total=len(train_s) + len(val_s), info="")
        advance = lambda n: progress.advance(task, n)  # noqa: E731
        train_images = load_images(manifest, train_s, size, cfg.model.interpolation, advance)
        val_images = load_images(manifest, val_s, size, cfg.model.interpolation, advance)
    train_targets = targets_for(manifest, train_s, cfg.data.soft_label_key)
    val_defective = np.array([manifest.is_defective(s) for s in val_s])

    steps_per_epoch = max(len(train_s) // cfg.train.batch_size, 1)
    pre = announce_preflight(cfg, manifest, steps_per_epoch, console)
    run = start_mlflow_run(cfg, run_dir, check, settings, config_path, extra_data, weights)
    try:
        with epoch_progress(console, cfg.train.epochs, steps_per_epoch, cfg.train.log_every_seconds) as (
            on_batch,
            on_epoch,
        ):
            result = fit_classifier(
                cfg,
                model,
                train_images,
                train_targets,
                val_images,
                val_defective,
                good_index,
                len(manifest.classes),
                run_dir,
                augment,
                resume=bool(resume),
                on_batch=on_batch,
                on_epoch=on_epoch,
            )
        console.print(
            f"best val AUROC {result.best_score:.4f} at epoch {result.best_epoch + 1}; "
            f"{result.epochs_run} epochs in {result.seconds / 60:.1f} min"
        )
        refuse_failed_run(cfg, result, pre, run_dir)

        model.load_state_dict(result.best_state)
        bundle_dir = run_dir / "bundle"
        threshold, val_report, parity = calibrate_and_export(
            cfg,
            model,
            manifest,
            val_images,
            val_defective,
            bundle_dir,
            run.info.run_id,
            check.dataset_hash,
            {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1},
            console,
        )

        eval_dir = run_dir / "eval"
        with progress_bar(console) as progress:
            task = progress.add_task("evaluating bundle on test", total=len(manifest.split("test")), info="")
            report = evaluate_bundle(
                bundle_dir,
                manifest,
                "test",
                cfg.data.group_by,
                eval_dir,
                progress=lambda n: progress.advance(task, n),
            )
        report["parity"] = {
            "max_abs_diff": parity.max_abs_diff,
            "decisions_equal": parity.decisions_equal,
            "images": parity.images,
        }
        report["val"] = {k: val_report[k] for k in ("escape_rate", "false_reject_rate", "accuracy", "auroc")}
        report["training_minutes"] = round(result.seconds / 60, 2)
        report["epochs_run"] = result.epochs_run
        report_path = write_report(report, eval_dir / "report.json")
        update_meta(
            bundle_dir,
            metrics={k: report[k] for k in ("accuracy", "auroc", "f1", "escape_rate", "false_reject_rate")},
        )

        metrics = {
            "test_accuracy": report["accuracy"],
            "test_auroc": report["auroc"],
            "test_f1": report["f1"],
            "test_escape_rate": report["escape_rate"],
            "test_false_reject_rate": report["false_reject_rate"],
            "test_accuracy_at_0.5": report["at_threshold_0.5"]["accuracy"],
            "threshold": threshold,
            "val_escape_rate": val_report["escape_rate"],
            "val_false_reject_rate": val_report["false_reject_rate"],
            "parity_max_abs_diff": parity.max_abs_diff,
            "training_minutes": result.seconds / 60,
            "ms_per_image_1core": report["ms_per_image_1core"],
        }
        # Undefined rates (no denominator) are left out of MLflow, never logged as 0.
        mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})
        mlflow.log_artifacts(str(eval_dir), "eval")
        version = register_and_summarize(
            cfg, run.info.run_id, check, bundle_dir, report_path, report, run_dir, console
        )
        mlflow.end_run()
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    return TrainOutcome(
        run_dir,
        bundle_dir,
        report_path,
        report,
        run.info.run_id,
        cfg.mlflow.registered_model,
        version,
        result.seconds,
    )
