"""Detection: boxes with classes (FCOS); a part is rejected when any detection reaches its
class's threshold. Per-class thresholds are calibrated on val; mAP says how well boxes are
found and placed, the part-level rates what the line does with them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from zerodefect.datasets.manifest import DatasetError, Manifest, Sample
from zerodefect.formatting import fmt_rate
from zerodefect.training.config import Config
from zerodefect.training.report import Plant, Report
from zerodefect.training.tasks.base import Calibration, EvalRequest, FitJob, ParityReport, Split

# A detector whose best val mAP@0.5 stays under this learned nothing usable.
MIN_VAL_MAP50 = 0.05


class Detection:
    name = "detection"
    headline_metric = "map50"
    headline_label = "mAP@0.5"
    chance = MIN_VAL_MAP50
    has_boxes = True
    one_pass = False
    # INT8 is calibrated for classifiers only; a detector is served in fp32.
    int8 = False
    # A detector's false-reject rate is undefined without clean parts (NEU-DET) and then skipped.
    gate_metrics = {"escape_rate": False, "false_reject_rate": False, "map50": True}
    headline_keys = ("map50", "map50_95")

    def check_manifest(self, cfg: Config, manifest: Manifest) -> None:
        if manifest.task != self.name:
            raise DatasetError(
                f"{cfg.data.manifest}: a detection config needs a detection manifest, not {manifest.task}"
            )
        for split in ("train", "val"):
            if not any(s.boxes for s in manifest.split(split)):
                raise DatasetError(
                    f"{cfg.data.manifest}: the {split} split has no boxes; a detector cannot learn or be calibrated"
                )

    def build_model(self, cfg: Config, manifest: Manifest, pretrained: str | None) -> tuple[Any, Any]:
        from zerodefect.models.detector import build_detector

        det = cfg.model.detector
        return build_detector(
            manifest.classes,
            cfg.model.input_hw[0],
            pretrained,
            fpn_channels=det.fpn_channels,
            head_convs=det.head_convs,
            score_thresh=det.score_thresh,
            nms_thresh=det.nms_thresh,
            detections_per_img=det.detections_per_img,
            topk_candidates=det.topk_candidates,
        )

    def load_split(
        self, cfg: Config, manifest: Manifest, samples: list[Sample], progress: Callable[[int], None] | None
    ) -> Split:
        from zerodefect.training.detection import load_detection_data, load_tiled_detection_data

        size, interpolation, tiling = cfg.model.input_hw[0], cfg.model.interpolation, cfg.model.tiling
        if tiling is not None:
            views, truths, layout = load_tiled_detection_data(
                manifest, samples, size, interpolation, tiling, progress
            )
            return Split(samples, views, truths, layout)
        images, truths = load_detection_data(manifest, samples, size, interpolation, progress)
        return Split(samples, images, truths)

    def label_counts(self, manifest: Manifest, samples: list[Sample]) -> dict[str, int]:
        counts = {c: 0 for c in manifest.classes}
        for sample in samples:
            for label in sample.boxes.labels(manifest.classes):
                counts[label] = counts.get(label, 0) + 1
        return counts

    def boxes_at_input(self, train: Split) -> list[np.ndarray] | None:
        return [truth.xyxy for truth in train.truth]

    def fit(self, job: FitJob) -> Any:
        from zerodefect.training.detection import fit_detector

        return fit_detector(
            job.cfg,
            job.model,
            job.manifest.classes,
            job.train.images,
            job.train.truth,
            job.val.images,
            job.val.truth,
            job.run_dir,
            job.augment,
            resume=job.resume,
            on_batch=job.on_batch,
            on_epoch=job.on_epoch,
            val_layout=job.val.layout,
        )

    def predict(self, model: Any, images: np.ndarray) -> list:
        import torch

        from zerodefect.training.detection import predict_detections

        return predict_detections(model.cpu().eval(), images, torch.device("cpu"))

    def calibrate(self, cfg: Config, manifest: Manifest, model: Any, val: Split) -> Calibration:
        """Per-class thresholds at the best box F1, lowered together until val escapes are
        within the target."""
        from zerodefect.training.detection_metrics import calibrate_class_thresholds, part_report

        # The torch reference of export parity: per view (tile) with tiling, as the graph sees it.
        detections = self.predict(model, val.images)
        judged, truths = detections, val.truth
        if val.layout is not None:  # thresholds on whole images, as the line judges them
            judged, truths = val.layout.merge(detections, model.fcos.detections_per_img), val.layout.truths
        thresholds = calibrate_class_thresholds(
            truths, judged, len(manifest.classes), cfg.calibration.target_escape_rate
        )
        report = part_report(truths, judged, thresholds)
        summary = (
            "class thresholds "
            + ", ".join(f"{c} {t:.3f}" for c, t in zip(manifest.classes, thresholds, strict=True))
            + f": val escape rate {fmt_rate(report['escape_rate'], 3)}, "
            f"box precision {fmt_rate(report['box_precision'], 3)}, recall {fmt_rate(report['box_recall'], 3)}"
        )
        named = {c: float(t) for c, t in zip(manifest.classes, thresholds, strict=True)}
        return Calibration(named, report, detections, summary)

    def bundle_fields(self, cfg: Config, manifest: Manifest, model: Any, calibration: Calibration) -> dict:
        return {
            "good_class": None,
            "outputs": {
                "boxes": "[N, A, 4] decoded xyxy boxes in input pixels, one per FCOS point",
                "scores": "[N, A, C] per-class scores (sqrt of class probability x centerness)",
            },
            "threshold": float(min(calibration.thresholds.values())),
            "class_thresholds": calibration.thresholds,
            "postprocess": {**model.postprocess_params(), "level_sizes": list(model.level_sizes)},
            "tiling": cfg.model.tiling,
            "training": {"arch": "fcos-" + cfg.model.arch},
        }

    def export(
        self, cfg: Config, model: Any, meta: Any, folder: Path, val: Split, calibration: Calibration
    ) -> ParityReport:
        from zerodefect.training.export import export_detector_bundle

        return export_detector_bundle(
            model, meta, folder, val.images, calibration.predictions, cfg.export.opset
        )

    def recalibrate(self, bundle: Path, manifest: Manifest, target_escape_rate: float) -> dict[str, Any]:
        raise NotImplementedError("detector bundles are not quantized")

    def evaluate(self, request: EvalRequest) -> Report:
        """COCO mAP, per-class AP and the part-level plant numbers at the class thresholds."""
        from zerodefect.inference.engine import Engine
        from zerodefect.inference.postprocess import above
        from zerodefect.training.detection import draw_samples, save_pr_curves, truth_for
        from zerodefect.training.detection_metrics import coco_map, part_report
        from zerodefect.training.evaluate import add_latency, bundle_fields, refuse_unknown, split_samples

        manifest, plots_dir = request.manifest, request.plots_dir
        engine = Engine.from_bundle(request.bundle, threads=request.threads)
        meta = engine.meta
        samples = split_samples(manifest, request.split)
        refuse_unknown(
            manifest, meta, {lab for s in samples for lab in s.boxes.labels(manifest.classes)}, "box classes"
        )
        paths = [manifest.resolve(s) for s in samples]
        detections, sizes = engine.detect_files(paths, progress=request.progress)
        truths = [truth_for(manifest, s, size) for s, size in zip(samples, sizes, strict=True)]
        scores = coco_map(truths, detections, meta.classes, sizes)
        thresholds = engine.class_thresholds()
        data: dict[str, Any] = {
            "map50": scores["map50"],
            "map50_95": scores["map50_95"],
            "per_class_ap": scores["per_class_ap"],
            "per_class_ap50_95": scores["per_class_ap50_95"],
            **part_report(truths, detections, thresholds),
            "class_thresholds": dict(zip(meta.classes, thresholds.tolist(), strict=True)),
            **bundle_fields(meta, manifest, request.split),
        }
        add_latency(data, request.bundle, paths, request.timing_images)
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
            data["plots"] = [str(save_pr_curves(plots_dir, scores, meta.name))] + [str(p) for p in sheets]
        return self.report_from_json(data)

    def report_from_json(self, data: dict[str, Any]) -> Report:
        plant = Plant(
            n=int(data["images"]),
            defective=int(data["defective_images"]),
            escapes=int(data["escapes"]),
            false_rejects=int(data["false_rejects"]),
            escape_rate=data["escape_rate"],
            false_reject_rate=data["false_reject_rate"],
            thresholds=dict(data["class_thresholds"]),
            notes=list(data.get("notes", [])),
        )
        headline = {k: data[k] for k in self.headline_keys}
        return Report(self.name, plant, headline, {k: v for k, v in data.items() if k != "task"})

    def val_summary(self, val_report: dict[str, Any]) -> dict[str, Any]:
        return val_report

    def run_metrics(self, report: Report) -> dict[str, float | None]:
        data = report.data
        return {
            "test_box_precision": data["box_precision"],
            "test_box_recall": data["box_recall"],
            "parity_min_matched_iou": data["parity"]["min_matched_iou"],
            **{f"test_ap50_{c}": v for c, v in data["per_class_ap"].items()},
        }

    def summary_rows(self, report: Report) -> list[tuple[str, float | None]]:
        keys = ("map50", "map50_95", "escape_rate", "false_reject_rate", "box_precision", "box_recall")
        return [(key, report.data.get(key)) for key in keys]

    def detail_tables(self, report: Report) -> list[Table]:
        data = report.data
        table = Table("class", "AP@0.5", "AP@[.5:.95]", "threshold", title="per class")
        for name, ap in data["per_class_ap"].items():
            table.add_row(
                name,
                fmt_rate(ap),
                fmt_rate(data["per_class_ap50_95"].get(name)),
                f"{data['class_thresholds'][name]:.3f}",
            )
        return [table]


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
