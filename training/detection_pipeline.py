"""`zerodefect train` for detectors: the same steps and the same MLflow record as classifiers.

Train FCOS, calibrate per-class thresholds on val with the exact model that ships, export with
parity against torchvision, evaluate the bundle on test (COCO mAP, per-class AP, part-level
escape and false-reject rates, 1-core latency), log PR curves and sample images, register.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.formatting import fmt_rate
from zerodefect.inference.bundle import BundleMeta, InputSpec, update_meta
from zerodefect.settings import Settings
from zerodefect.training.config import Config
from zerodefect.training.progress import progress_bar


def build_from_config(cfg: Config, classes: list[str], pretrained: str | None):
    from zerodefect.models.detector import build_detector

    det = cfg.model.detector
    return build_detector(
        classes,
        cfg.model.input_size,
        pretrained,
        fpn_channels=det.fpn_channels,
        head_convs=det.head_convs,
        score_thresh=det.score_thresh,
        nms_thresh=det.nms_thresh,
        detections_per_img=det.detections_per_img,
        topk_candidates=det.topk_candidates,
    )


def calibrate_and_export_detector(
    cfg: Config,
    model,
    manifest: Manifest,
    val_images: np.ndarray,
    val_truths: list,
    bundle_dir: Path,
    run_id: str | None,
    dataset_hash: str,
    training_info: dict[str, Any],
    console: Console,
):
    """Per-class thresholds from val, then an export that must match torchvision on val.

    Returns (class thresholds, val part report, parity report).
    """
    import torch

    from zerodefect.training.detection import predict_detections
    from zerodefect.training.detection_metrics import calibrate_class_thresholds, part_report
    from zerodefect.training.export import export_detector_bundle

    model.cpu().eval()
    with console.status("calibrating per-class thresholds on the val split"):
        val_dets = predict_detections(model, val_images, torch.device("cpu"))
        thresholds = calibrate_class_thresholds(
            val_truths, val_dets, len(manifest.classes), cfg.calibration.target_escape_rate
        )
    val_report = part_report(val_truths, val_dets, thresholds)
    console.print(
        "class thresholds "
        + ", ".join(f"{c} {t:.3f}" for c, t in zip(manifest.classes, thresholds, strict=True))
        + f": val escape rate {fmt_rate(val_report['escape_rate'], 3)}, "
        f"box precision {fmt_rate(val_report['box_precision'], 3)}, recall {fmt_rate(val_report['box_recall'], 3)}"
    )
    size = cfg.model.input_size
    meta = BundleMeta(
        name=cfg.mlflow.registered_model or cfg.name,
        task="detection",
        classes=manifest.classes,
        good_class=None,
        input=InputSpec(
            height=size,
            width=size,
            interpolation=cfg.model.interpolation,
            mean=list(model.offset.flatten().div(255).tolist()),
            std=list(model.scale.flatten().div(255).tolist()),
        ),
        outputs={
            "boxes": "[N, A, 4] decoded xyxy boxes in input pixels, one per FCOS point",
            "scores": "[N, A, C] per-class scores (sqrt of class probability x centerness)",
        },
        threshold=float(thresholds.min()),
        class_thresholds={c: float(t) for c, t in zip(manifest.classes, thresholds, strict=True)},
        target_escape_rate=cfg.calibration.target_escape_rate,
        postprocess={**model.postprocess_params(), "level_sizes": list(model.level_sizes)},
        run_id=run_id,
        dataset_hash=dataset_hash,
        training={"arch": "fcos-" + cfg.model.arch, **training_info, "config": cfg.model_dump(mode="json")},
    )
    with console.status("exporting to ONNX and checking parity on the val split"):
        parity = export_detector_bundle(model, meta, bundle_dir, val_images, val_dets, cfg.export.opset)
    console.print(
        f"export parity on {parity.images} val images: {parity.compared_detections} detections over "
        f"threshold, worst matched IoU {parity.min_matched_iou:.5f}, images differing {parity.differing_images}"
    )
    return thresholds, val_report, parity


def load_split_data(cfg: Config, manifest: Manifest, console: Console, names: tuple[str, ...]):
    from zerodefect.training.detection import load_detection_data

    splits = [manifest.split(n) for n in names]
    out = []
    with progress_bar(console) as progress:
        task = progress.add_task("decoding images", total=sum(len(s) for s in splits), info="")
        for samples in splits:
            out.append(
                load_detection_data(
                    manifest,
                    samples,
                    cfg.model.input_size,
                    cfg.model.interpolation,
                    lambda n: progress.advance(task, n),
                )
            )
    return out


def run_detection_training(
    cfg: Config,
    manifest: Manifest,
    check,
    run_dir: Path,
    config_path: Path | None,
    resume: bool | Path,
    extra_data: Path | None,
    settings: Settings,
    console: Console,
):
    import mlflow

    from zerodefect.datasets.augment import build_augmentations
    from zerodefect.training.detection import fit_detector
    from zerodefect.training.evaluate import evaluate_detector_bundle, write_report
    from zerodefect.training.pipeline import (
        TrainOutcome,
        announce_preflight,
        epoch_progress,
        refuse_failed_run,
        register_and_summarize,
        start_mlflow_run,
    )
    from zerodefect.training.train import seed_everything

    if manifest.task != "detection":
        raise DatasetError(
            f"{cfg.data.manifest}: a detection config needs a detection manifest, not {manifest.task}"
        )
    for split in ("train", "val"):
        if not any(s.boxes for s in manifest.split(split)):
            raise DatasetError(
                f"{cfg.data.manifest}: the {split} split has no boxes; a detector cannot learn or be calibrated"
            )
    augment = build_augmentations(cfg.augment, "detection")
    seed_everything(cfg.train.seed)  # the head's initial weights, whatever ran before in the process
    model, weights = build_from_config(cfg, manifest.classes, cfg.model.pretrained)
    (train_images, train_truths), (val_images, val_truths) = load_split_data(
        cfg, manifest, console, ("train", "val")
    )

    steps_per_epoch = max(len(train_images) // cfg.train.batch_size, 1)
    pre = announce_preflight(cfg, manifest, steps_per_epoch, console, [t.boxes for t in train_truths])
    run = start_mlflow_run(cfg, run_dir, check, settings, config_path, extra_data, weights)
    try:
        with epoch_progress(console, cfg.train.epochs, steps_per_epoch, cfg.train.log_every_seconds) as (
            on_batch,
            on_epoch,
        ):
            result = fit_detector(
                cfg,
                model,
                manifest.classes,
                train_images,
                train_truths,
                val_images,
                val_truths,
                run_dir,
                augment,
                resume=bool(resume),
                on_batch=on_batch,
                on_epoch=on_epoch,
            )
        console.print(
            f"best val mAP@0.5 {result.best_score:.4f} at epoch {result.best_epoch + 1}; "
            f"{result.epochs_run} epochs in {result.seconds / 60:.1f} min"
        )
        refuse_failed_run(cfg, result, pre, run_dir)
        model.load_state_dict(result.best_state)
        bundle_dir = run_dir / "bundle"
        thresholds, val_report, parity = calibrate_and_export_detector(
            cfg,
            model,
            manifest,
            val_images,
            val_truths,
            bundle_dir,
            run.info.run_id,
            check.dataset_hash,
            {"epochs_run": result.epochs_run, "best_epoch": result.best_epoch + 1},
            console,
        )
        eval_dir = run_dir / "eval"
        with progress_bar(console) as progress:
            task = progress.add_task("evaluating bundle on test", total=len(manifest.split("test")), info="")
            report = evaluate_detector_bundle(
                bundle_dir, manifest, "test", eval_dir, progress=lambda n: progress.advance(task, n)
            )
        report["parity"] = {
            "images": parity.images,
            "compared_detections": parity.compared_detections,
            "min_matched_iou": parity.min_matched_iou,
            "max_score_diff": parity.max_score_diff,
            "differing_images": parity.differing_images,
        }
        report["val"] = val_report
        report["training_minutes"] = round(result.seconds / 60, 2)
        report["epochs_run"] = result.epochs_run
        report_path = write_report(report, eval_dir / "report.json")
        update_meta(
            bundle_dir,
            metrics={k: report[k] for k in ("map50", "map50_95", "escape_rate", "false_reject_rate")},
        )
        metrics = {
            "test_map50": report["map50"],
            "test_map50_95": report["map50_95"],
            "parity_min_matched_iou": parity.min_matched_iou,
            "training_minutes": result.seconds / 60,
            **{f"test_ap50_{c}": v for c, v in report["per_class_ap"].items() if v is not None},
        }
        # Undefined rates (no denominator) are left out of MLflow, never logged as 0.
        for key in ("escape_rate", "false_reject_rate", "box_precision", "box_recall"):
            if report[key] is not None:
                metrics[f"test_{key}"] = report[key]
        if report.get("ms_per_image_1core") is not None:
            metrics["ms_per_image_1core"] = report["ms_per_image_1core"]
        mlflow.log_metrics(metrics)
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
