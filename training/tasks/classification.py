"""Classification: one image, one label; a part is rejected when 1 - P(good) reaches the
threshold calibrated on val (timm backbone, softmax or a single defect logit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.formatting import fmt_rate
from zerodefect.training.config import Config
from zerodefect.training.report import Report, binary_plant
from zerodefect.training.tasks.base import Calibration, EvalRequest, FitJob, ParityReport, Split

# A val AUROC at or under this is a coin toss: the run learned nothing (health check).
CHANCE_AUROC = 0.55


def _good_index(manifest: Manifest) -> int | None:
    return manifest.classes.index(manifest.good_class) if manifest.good_class else None


class Classification:
    name = "classification"
    headline_metric = "auroc"
    headline_label = "AUROC"
    chance = CHANCE_AUROC
    has_boxes = False
    one_pass = False
    # Static INT8 keeps a classifier's accuracy (docs/results/README.md); it is recalibrated.
    int8 = True
    # A classifier's false-reject rate is undefined without good parts, and then skipped.
    gate_metrics = {"escape_rate": False, "false_reject_rate": False, "auroc": True}
    headline_keys = ("accuracy", "auroc", "f1")

    def check_manifest(self, cfg: Config, manifest: Manifest) -> None:
        """Any manifest with train and val images will do (checked by the pipeline)."""

    def build_model(self, cfg: Config, manifest: Manifest, pretrained: str | None) -> tuple[Any, Any]:
        from zerodefect.models.classifier import build_classifier

        return build_classifier(
            cfg.model.arch,
            manifest.classes,
            manifest.good_class,
            pretrained,
            soft_labels=cfg.data.soft_label_key is not None,
            drop_rate=cfg.model.drop_rate,
        )

    def load_split(
        self, cfg: Config, manifest: Manifest, samples: list[Sample], progress: Callable[[int], None] | None
    ) -> Split:
        from zerodefect.training.data import load_images

        images = load_images(manifest, samples, cfg.model.input_hw, cfg.model.interpolation, progress)
        return Split(samples, images, np.array([manifest.is_defective(s) for s in samples]))

    def label_counts(self, manifest: Manifest, samples: list[Sample]) -> dict[str, int]:
        counts = {c: 0 for c in manifest.classes}
        for sample in samples:
            for label in sample.labels:
                counts[label] = counts.get(label, 0) + 1
        return counts

    def boxes_at_input(self, train: Split) -> list[np.ndarray] | None:
        return None

    def fit(self, job: FitJob) -> Any:
        from zerodefect.training.data import targets_for
        from zerodefect.training.train import fit_classifier

        manifest = job.manifest
        return fit_classifier(
            job.cfg,
            job.model,
            job.train.images,
            targets_for(manifest, job.train.samples, job.cfg.data.soft_label_key),
            job.val.images,
            job.val.truth,
            _good_index(manifest),
            len(manifest.classes),
            job.run_dir,
            job.augment,
            resume=job.resume,
            on_batch=job.on_batch,
            on_epoch=job.on_epoch,
        )

    def predict(self, model: Any, images: np.ndarray) -> np.ndarray:
        import torch

        from zerodefect.training.train import predict

        return predict(model.cpu().eval(), images, torch.device("cpu"))

    def calibrate(self, cfg: Config, manifest: Manifest, model: Any, val: Split) -> Calibration:
        """The highest threshold within the escape target on val, with TTA as exported."""
        from zerodefect.training.metrics import binary_report, calibrate_threshold
        from zerodefect.training.train import defect_scores

        model.tta = cfg.export.tta
        probabilities = self.predict(model, val.images)
        scores = defect_scores(probabilities, _good_index(manifest))
        threshold = calibrate_threshold(val.truth, scores, cfg.calibration.target_escape_rate)
        report = binary_report(val.truth, scores, threshold)
        summary = (
            f"threshold {threshold:.4f}: val escape rate {fmt_rate(report['escape_rate'], 3)}, "
            f"false-reject rate {fmt_rate(report['false_reject_rate'], 3)}"
        )
        return Calibration({"threshold": threshold}, report, probabilities, summary)

    def bundle_fields(self, cfg: Config, manifest: Manifest, model: Any, calibration: Calibration) -> dict:
        return {
            "good_class": manifest.good_class,
            "outputs": {"probabilities": "[N, C] class probabilities, classes in bundle order"},
            "threshold": calibration.thresholds["threshold"],
            "tta": cfg.export.tta,
            "training": {"arch": cfg.model.arch, "group_by": cfg.data.group_by},
        }

    def export(
        self, cfg: Config, model: Any, meta: Any, folder: Path, val: Split, calibration: Calibration
    ) -> ParityReport:
        from zerodefect.training.export import export_bundle

        return export_bundle(
            model, meta, folder, val.images, calibration.predictions, cfg.export.opset, cfg.export.parity_atol
        )

    def recalibrate(self, bundle: Path, manifest: Manifest, target_escape_rate: float) -> dict[str, Any]:
        """The threshold of a changed graph (an INT8 copy) on val, through ONNX Runtime."""
        from zerodefect.inference.engine import Engine
        from zerodefect.training.metrics import calibrate_threshold

        engine = Engine.from_bundle(bundle)
        val = manifest.split("val")
        scores = engine.defect_scores(engine.score_files([manifest.resolve(s) for s in val]))
        defective = np.array([manifest.is_defective(s) for s in val])
        return {"threshold": calibrate_threshold(defective, scores, target_escape_rate)}

    def evaluate(self, request: EvalRequest) -> Report:
        """Plant report at the bundle's threshold and at 0.5, per group of metadata keys."""
        from zerodefect.inference.engine import Engine
        from zerodefect.training.evaluate import (
            add_latency,
            bundle_fields,
            default_group_by,
            refuse_unknown,
            save_score_plots,
            split_samples,
        )
        from zerodefect.training.metrics import plant_report

        manifest, plots_dir = request.manifest, request.plots_dir
        engine = Engine.from_bundle(request.bundle, threads=request.threads)
        meta = engine.meta
        samples = split_samples(manifest, request.split)
        refuse_unknown(manifest, meta, {lab for s in samples for lab in s.labels})
        paths = [manifest.resolve(s) for s in samples]
        scores = engine.defect_scores(engine.score_files(paths, progress=request.progress))
        defective = np.array([manifest.is_defective(s) for s in samples])
        group_by = default_group_by(meta, samples) if request.group_by is None else request.group_by
        groups = {key: np.array([str(s.meta.get(key)) for s in samples]) for key in group_by}
        data = plant_report(defective, scores, meta.threshold, groups)
        data.update(bundle_fields(meta, manifest, request.split))
        data["tta"] = meta.tta
        add_latency(data, request.bundle, paths, request.timing_images)
        if plots_dir is not None:
            save_score_plots(plots_dir, data, defective, scores, samples, meta.name)
        return self.report_from_json(data)

    def report_from_json(self, data: dict[str, Any]) -> Report:
        headline = {k: data[k] for k in self.headline_keys}
        return Report(self.name, binary_plant(data), headline, {k: v for k, v in data.items() if k != "task"})

    def val_summary(self, val_report: dict[str, Any]) -> dict[str, Any]:
        return {k: val_report[k] for k in ("escape_rate", "false_reject_rate", "accuracy", "auroc")}

    def run_metrics(self, report: Report) -> dict[str, float | None]:
        data = report.data
        return {
            "test_accuracy_at_0.5": data["at_threshold_0.5"]["accuracy"],
            "threshold": report.plant.thresholds["threshold"],
            "val_escape_rate": data["val"]["escape_rate"],
            "val_false_reject_rate": data["val"]["false_reject_rate"],
            "parity_max_abs_diff": data["parity"]["max_abs_diff"],
        }

    def summary_rows(self, report: Report) -> list[tuple[str, float | None]]:
        data = report.data
        keys = (
            "accuracy",
            "precision",
            "recall",
            "f1",
            "auroc",
            "escape_rate",
            "false_reject_rate",
            "threshold",
        )
        rows = [(key, data.get(key)) for key in keys]
        return rows + [("accuracy at 0.5", data.get("at_threshold_0.5", {}).get("accuracy"))]

    def detail_tables(self, report: Report) -> list[Table]:
        tables = []
        for key, groups in report.data.get("groups", {}).items():
            table = Table(
                key,
                "n",
                "escapes",
                "escape",
                "false reject",
                "AUROC",
                "accuracy",
                "acc at 0.5",
                title=f"by {key}, at the calibrated threshold",
            )
            for name, g in groups.items():
                (_, _), (escapes, _) = g["confusion"]["matrix"]
                table.add_row(
                    name,
                    str(g["n"]),
                    f"{escapes}/{g['defective']}",
                    fmt_rate(g["escape_rate"]),
                    fmt_rate(g["false_reject_rate"]),
                    fmt_rate(g["auroc"]),
                    fmt_rate(g["accuracy"]),
                    fmt_rate(g["accuracy_at_0.5"]),
                )
            tables.append(table)
        return tables
