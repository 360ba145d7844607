"""`zerodefect train`: data check, training, calibration, export, evaluation, registration.

One command takes labeled images to a registered, verified bundle, and every step leaves its
numbers in one MLflow run: parameters, per-epoch metrics, the dataset hash, plots, the report
and the bundle. The same steps drive every task; the task (zerodefect.training.tasks) supplies
its model, data, loop, calibration, export and metrics.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.datasets.validate import validate
from zerodefect.inference.bundle import update_meta
from zerodefect.settings import Settings, get_settings
from zerodefect.training import distributed
from zerodefect.training.config import Config
from zerodefect.training.health import Preflight, preflight
from zerodefect.training.progress import progress_bar
from zerodefect.training.release import calibrate_and_export, decode_splits
from zerodefect.training.report import Report, write_report
from zerodefect.training.runs import keep_inputs, mark_finished, new_run_dir, prepare_manifest, run_id_of
from zerodefect.training.tasks import FitJob, Split, Task, get_task


@dataclass
class TrainOutcome:
    run_dir: Path
    bundle_dir: Path
    report_path: Path
    report: Report
    run_id: str
    model_name: str | None
    version: str | None
    train_seconds: float


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

    from zerodefect.training.config import load_config

    console = console or Console()
    best = run_dir / "best.pt"
    if not best.is_file():
        raise DatasetError(f"{run_dir}: no best.pt; is this a training run folder?")
    cfg = load_config(run_dir / "config.yaml", overrides)
    task = get_task(cfg.task)
    manifest = Manifest.read(run_dir / "manifest.jsonl")
    check = validate(manifest)
    bundle_dir = out or run_dir / "bundle"
    state = torch.load(best, map_location="cpu", weights_only=False)
    model, _ = task.build_model(cfg, manifest, None)
    model.load_state_dict(state["model"])
    (val,) = decode_splits(task, cfg, manifest, console, ("val",))
    info = {"best_epoch": state["epoch"] + 1, "exported_from": str(run_dir)}
    calibrate_and_export(
        cfg, task, model, manifest, val, bundle_dir, run_id_of(run_dir), check.dataset_hash, info, console
    )
    return bundle_dir


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


def _train_worker(
    cfg: Config, task: Task, world: distributed.World, resume: bool | Path, extra_data: Path | None
) -> None:
    """Rank > 0 of a DDP run: the same model, data and seeds as rank 0, its share of each batch,
    nothing written (no run folder, MLflow, export or registry); gone once the weights are
    trained and checked equal to rank 0's."""
    from zerodefect.datasets.augment import build_augmentations
    from zerodefect.training.train import seed_everything

    quiet = Console(quiet=True)
    logging.getLogger().setLevel(logging.WARNING)  # rank 0 says what all of them do
    manifest = distributed.first_on_each_node(world, lambda: prepare_manifest(cfg, extra_data))
    run_dir = distributed.broadcast(world, None)
    task.check_manifest(cfg, manifest)
    augment = build_augmentations(cfg.augment, boxes=task.has_boxes)
    seed_everything(cfg.train.seed)
    model, _ = task.build_model(cfg, manifest, cfg.model.pretrained)
    (train,) = decode_splits(task, cfg, manifest, quiet, ("train",))
    # Rank 0 alone validates: the val split is left empty here (same types, no images).
    empty = Split([], train.images[:0], train.truth[:0])
    task.fit(FitJob(cfg, model, manifest, train, empty, run_dir, augment, bool(resume)))
    record_processes(world, model, run_dir, quiet)


def record_processes(world: distributed.World, model: Any, run_dir: Path, console: Console) -> None:
    """After DDP training: check that every process holds the same weights (a ValueError if
    not), leave the process group, and on rank 0 keep the digests in run_dir/ddp.json and the
    MLflow run (what a test or an auditor compares)."""
    import mlflow

    digests = distributed.gather_digests(world, model)
    distributed.finish()
    if not world.main:
        return
    info = {"processes": world.size, "backend": world.backend, "weights_sha256": digests}
    (run_dir / "ddp.json").write_text(json.dumps(info, indent=2))
    mlflow.log_dict(info, "ddp.json")
    console.print(f"DDP: {world.size} processes ended with the same weights (sha256 {digests[0][:12]})")


def run_training(
    cfg: Config,
    config_path: Path | None = None,
    resume: bool | Path = False,
    extra_data: Path | None = None,
    settings: Settings | None = None,
    console: Console | None = None,
) -> TrainOutcome | None:
    """Train, calibrate on val, export with parity, evaluate on test, log and register.

    Started by torchrun (`zerodefect train --nproc N`), every process trains its share of each
    batch (zerodefect.training.distributed); rank 0 alone does the rest and returns the outcome,
    the other processes return None once the weights are trained.
    """
    import mlflow

    from zerodefect.datasets.augment import build_augmentations
    from zerodefect.training.evaluate import evaluate_bundle
    from zerodefect.training.tracking import (
        epoch_progress,
        log_test_metrics,
        refuse_failed_run,
        register,
        start_mlflow_run,
    )
    from zerodefect.training.train import seed_everything

    task = get_task(cfg.task)
    world = distributed.start(cfg.train.device)
    distributed.check_config(task.one_pass, task.name, cfg.train.batch_size, world.size)
    if not world.main:
        return _train_worker(cfg, task, world, resume, extra_data)
    settings = settings or get_settings()
    console = console or Console()
    manifest = distributed.first_on_each_node(world, lambda: prepare_manifest(cfg, extra_data))
    with console.status("validating dataset (every image is opened once)"):
        check = validate(manifest)
    console.print(
        f"dataset [bold]{manifest.name}[/]: {check.images} images, hash {check.dataset_hash[:12]}, {check.counts}"
    )
    if not manifest.split("train") or not manifest.split("val"):
        raise DatasetError(f"{cfg.data.manifest}: needs non-empty train and val splits")

    run_dir = distributed.broadcast(world, new_run_dir(settings, cfg.name, resume))
    keep_inputs(run_dir, cfg, manifest)
    task.check_manifest(cfg, manifest)
    augment = build_augmentations(cfg.augment, boxes=task.has_boxes)
    # The new head's initial weights come from torch's global RNG: seed it first, or the run
    # depends on whatever drew random numbers earlier in the process.
    seed_everything(cfg.train.seed)
    model, weights = task.build_model(cfg, manifest, cfg.model.pretrained)
    train, val = decode_splits(task, cfg, manifest, console, ("train", "val"))

    # Per training image (a tiled detector's: per tile).
    steps_per_epoch = max(len(train.images) // cfg.train.batch_size, 1)
    pre = announce_preflight(cfg, manifest, steps_per_epoch, console, task.boxes_at_input(train))
    run = start_mlflow_run(cfg, run_dir, check, settings, config_path, extra_data, weights, world.size)
    try:
        with epoch_progress(console, cfg.train.epochs, steps_per_epoch, cfg.train.log_every_seconds) as (
            on_batch,
            on_epoch,
        ):
            job = FitJob(cfg, model, manifest, train, val, run_dir, augment, bool(resume), on_batch, on_epoch)
            result = task.fit(job)
        if world.distributed:
            record_processes(world, model, run_dir, console)
        if task.one_pass:
            # A one-pass fit has no best epoch; without val defects it has no val score either.
            judged = (
                "" if np.isnan(result.best_score) else f"; val {task.headline_label} {result.best_score:.4f}"
            )
            console.print(f"fitted in one pass in {result.seconds / 60:.1f} min{judged}")
        else:
            console.print(
                f"best val {task.headline_label} {result.best_score:.4f} at epoch {result.best_epoch + 1}; "
                f"{result.epochs_run} epochs in {result.seconds / 60:.1f} min"
            )
        refuse_failed_run(cfg, result, pre, run_dir)

        model.load_state_dict(result.best_state)
        bundle_dir = run_dir / "bundle"
        calibration, parity = calibrate_and_export(
            cfg,
            task,
            model,
            manifest,
            val,
            bundle_dir,
            run.info.run_id,
            check.dataset_hash,
            {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1},
            console,
        )

        eval_dir = run_dir / "eval"
        with progress_bar(console) as progress:
            bar = progress.add_task("evaluating bundle on test", total=len(manifest.split("test")), info="")
            report = evaluate_bundle(
                bundle_dir,
                manifest,
                "test",
                None,  # the bundle's group_by (the config's), plus a folded class's defect_type
                eval_dir,
                progress=lambda n: progress.advance(bar, n),
            )
        report.data["parity"] = parity.to_json()
        report.data["val"] = task.val_summary(calibration.val_report)
        report.data["training_minutes"] = round(result.seconds / 60, 2)
        report.data["epochs_run"] = result.epochs_run
        report_path = write_report(report, eval_dir / "report.json")
        shipped = (*report.headline, "escape_rate", "false_reject_rate")
        update_meta(bundle_dir, metrics={k: report.metric(k) for k in shipped})

        log_test_metrics(task, report, result.seconds)
        mlflow.log_artifacts(str(eval_dir), "eval")
        mlflow.log_artifacts(str(bundle_dir), "bundle")
        version = register(cfg, task, run.info.run_id, check, report, console)
        mark_finished(run_dir, run.info.run_id, bundle_dir, report_path, version)
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
