"""Anomaly: trained on good parts only (PatchCore, or PaDiM by model.anomaly.method); a part
is rejected when its anomaly score, the heatmap's maximum, reaches the threshold, and its
defects are the heatmap's regions.

Fitting is one pass (features of the good train parts, then a coreset), not the shared epoch
loop. The threshold is set on val for the escape target when val has defective parts, and for
a false-reject target on good val parts when it has none: plants that have no labeled defects
yet can still ship a model with a known false-reject rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.table import Table

from zerodefect.datasets.manifest import DatasetError, Manifest, Sample
from zerodefect.formatting import fmt_rate
from zerodefect.training.config import Config
from zerodefect.training.report import Report, binary_plant
from zerodefect.training.tasks.base import Calibration, EvalRequest, FitJob, ParityReport, Split

# A val image AUROC at or under this is a coin toss (only checked when val has defects).
CHANCE_AUROC = 0.55
# The units of each model.anomaly.method's scores and heatmaps (the bundle's outputs say which).
DISTANCES = {
    "patchcore": "nearest-neighbour feature distance",
    "padim": "per-position Mahalanobis distance, diagonal covariance",
}


@dataclass
class AnomalyTruth:
    """Per image: defective or not, and its defect mask at the input size (False where none).
    `has_mask` is False for a defective image without a mask: pixel metrics leave it out."""

    defective: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray


def load_masks(manifest: Manifest, samples: list[Sample], size: tuple[int, int]) -> AnomalyTruth:
    """Masks resized (nearest) to the model's input size: pixel metrics are measured there."""
    import cv2

    defective = np.array([manifest.is_defective(s) for s in samples], bool)
    masks = np.zeros((len(samples), *size), bool)
    has_mask = ~defective
    for i, sample in enumerate(samples):
        path = manifest.resolve_mask(sample)
        if path is None:
            continue
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DatasetError(f"{path}: mask cannot be read")
        masks[i] = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST) > 0
        has_mask[i] = True
    return AnomalyTruth(defective, masks, has_mask)


def good_for_training(cfg: Config, train: Split) -> np.ndarray:
    """The train parts the memory bank is made of: the good ones, and with a soft-label key
    (an expert's defect probability, ELPV) only those the experts gave probability 0: a
    doubtful cell in the bank would teach the model that its crack is normal."""
    good = ~train.truth.defective
    key = cfg.data.soft_label_key
    if key:
        good &= np.array([float(s.meta.get(key, 0.0)) == 0.0 for s in train.samples])
    if not good.any():
        raise DatasetError(f"{cfg.data.manifest}: no good train part to fit the memory bank on")
    return good


def fitted_size(cfg: Config, model: Any) -> dict[str, Any]:
    """What the fit kept, for the bundle: PatchCore's memory bank [M, D] and coreset ratio, or
    PaDiM's per-position statistics [D, h, w]."""
    if cfg.model.anomaly.method == "padim":
        return {"statistics": list(model.feature_mean.shape)}
    return {"memory_bank": list(model.memory_bank.shape), "coreset_ratio": cfg.model.anomaly.coreset_ratio}


def region_class(manifest: Manifest) -> str:
    """The class a heatmap region is recorded as: the manifest's first defect class (the model
    finds anomalies; it does not tell defect kinds apart)."""
    return manifest.defect_classes()[0]


class Anomaly:
    name = "anomaly"
    headline_metric = "image_auroc"
    headline_label = "image AUROC"
    chance = CHANCE_AUROC
    has_boxes = False
    # Fitting is one pass (no epochs, optimizer or loss): the schedule's health checks do not apply.
    one_pass = True
    # The kNN distances are not calibrated for INT8; anomaly bundles are served in fp32.
    int8 = False
    gate_metrics = {"escape_rate": False, "false_reject_rate": False, "image_auroc": True}
    headline_keys = ("image_auroc", "pixel_auroc", "pro")

    def check_manifest(self, cfg: Config, manifest: Manifest) -> None:
        if not manifest.defect_classes():
            raise DatasetError(
                f"{cfg.data.manifest}: an anomaly manifest needs a defect class besides the good "
                f"class (heatmap regions are recorded under it); classes: {manifest.classes}"
            )
        for split in ("train", "val"):
            if all(manifest.is_defective(s) for s in manifest.split(split)):
                raise DatasetError(f"{cfg.data.manifest}: the {split} split has no good part")

    def build_model(self, cfg: Config, manifest: Manifest, pretrained: str | None) -> tuple[Any, Any]:
        """PatchCore, or PaDiM (model.anomaly.method): the same features, call and outputs."""
        from zerodefect.models.padim import build_padim
        from zerodefect.models.patchcore import build_patchcore

        spec = cfg.model.anomaly
        build = build_padim if spec.method == "padim" else build_patchcore
        return build(cfg.model.arch, pretrained, spec.neighbourhood, spec.sigma)

    def load_split(
        self, cfg: Config, manifest: Manifest, samples: list[Sample], progress: Callable[[int], None] | None
    ) -> Split:
        from zerodefect.training.data import load_images

        size = cfg.model.input_hw
        images = load_images(manifest, samples, size, cfg.model.interpolation, progress)
        return Split(samples, images, load_masks(manifest, samples, size))

    def label_counts(self, manifest: Manifest, samples: list[Sample]) -> dict[str, int]:
        """The training examples are the good parts only (defective train parts stay out of the
        fit), so the pre-flight does not warn that the defect class has none."""
        return {"good": sum(not manifest.is_defective(s) for s in samples)}

    def boxes_at_input(self, train: Split) -> list[np.ndarray] | None:
        return None

    def fit(self, job: FitJob) -> Any:
        """One pass: the good train parts' features into the memory bank, then the val image
        AUROC when val has defects."""
        import torch

        from zerodefect.training.metrics import binary_report
        from zerodefect.training.train import FitResult

        tick = time.perf_counter()
        good = job.train.images[good_for_training(job.cfg, job.train)]
        spec = job.cfg.model.anomaly
        stats = job.model.fit_bank(good, spec.coreset_ratio, job.cfg.train.batch_size, job.cfg.train.seed)
        scores, _ = self.predict(job.model, job.val.images)
        val = binary_report(job.val.truth.defective, scores, float(np.max(scores)))
        seconds = time.perf_counter() - tick
        # Without val defects there is no AUROC to judge the fit by; NaN passes the health check.
        best = val["auroc"] if val["auroc"] is not None else float("nan")
        row = {"epoch": 1, "seconds": seconds, "val_image_auroc": val["auroc"], **stats}
        if job.on_epoch:
            job.on_epoch(row)
        state = {k: v.clone() for k, v in job.model.state_dict().items()}
        torch.save({"model": state, "epoch": 0}, job.run_dir / "best.pt")
        return FitResult(state, 0, best, 1, seconds, [row])

    def predict(self, model: Any, images: np.ndarray, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(image scores [N], heatmaps [N, S, S]) from torch on the CPU."""
        import torch

        model = model.cpu().eval()
        scores, heatmaps = [], []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                s, h = model(torch.from_numpy(images[start : start + batch_size]))
                scores.append(s.numpy())
                heatmaps.append(h.numpy())
        size = images.shape[1:3]
        if not scores:
            return np.zeros(0, np.float32), np.zeros((0, *size), np.float32)
        return np.concatenate(scores), np.concatenate(heatmaps)

    def calibrate(self, cfg: Config, manifest: Manifest, model: Any, val: Split) -> Calibration:
        """For the escape target when val has defective parts, else for the false-reject target
        on the good val parts."""
        from zerodefect.training.anomaly_metrics import threshold_for_false_rejects
        from zerodefect.training.metrics import binary_report, calibrate_threshold

        scores, heatmaps = self.predict(model, val.images)
        defective = val.truth.defective
        if defective.any():
            threshold = calibrate_threshold(defective, scores, cfg.calibration.target_escape_rate)
            basis = f"escape target {cfg.calibration.target_escape_rate:g}"
        else:
            threshold = threshold_for_false_rejects(scores, cfg.calibration.target_false_reject_rate)
            basis = f"false-reject target {cfg.calibration.target_false_reject_rate:g} (val has no defects)"
        report = binary_report(defective, scores, threshold)
        report["calibrated_for"] = "escape_rate" if defective.any() else "false_reject_rate"
        # The good parts' typical heat: the display scale's zero (the threshold shows as 0.5).
        report["heat_floor"] = float(np.median(heatmaps[~defective]))
        summary = (
            f"threshold {threshold:.4f} for the {basis}: val escape rate "
            f"{fmt_rate(report['escape_rate'], 3)}, false-reject rate {fmt_rate(report['false_reject_rate'], 3)}"
        )
        return Calibration({"threshold": threshold}, report, (scores, heatmaps), summary)

    def bundle_fields(self, cfg: Config, manifest: Manifest, model: Any, calibration: Calibration) -> dict:
        spec = cfg.model.anomaly
        return {
            "good_class": manifest.good_class,
            "outputs": {
                "scores": f"[N] anomaly score: the heatmap's maximum ({DISTANCES[spec.method]})",
                "heatmap": "[N, H, W] anomaly heatmap at the input size, smoothed",
            },
            "threshold": calibration.thresholds["threshold"],
            "postprocess": {
                "region_class": region_class(manifest),
                "min_region_pixels": spec.min_region_pixels,
                "heat_floor": calibration.val_report["heat_floor"],
                "calibrated_for": calibration.val_report["calibrated_for"],
                "target_false_reject_rate": cfg.calibration.target_false_reject_rate,
            },
            "training": {"arch": f"{spec.method}-{cfg.model.arch}", **fitted_size(cfg, model)},
        }

    def export(
        self, cfg: Config, model: Any, meta: Any, folder: Path, val: Split, calibration: Calibration
    ) -> ParityReport:
        from zerodefect.training.export import _write_verified, export_onnx

        onnx_bytes = export_onnx(
            model, meta.input.height, meta.input.width, cfg.export.opset, ("scores", "heatmap")
        )
        # Scores within parity_atol of the threshold (relative); heatmaps within 10x that: the
        # Gaussian spreads the rounding of near-zero distances (see check_anomaly_parity) into
        # pixels nearby, measured at 1.3e-4 of the threshold on KolektorSDD at 320 px.
        tolerance = cfg.export.parity_atol * meta.threshold
        return _write_verified(
            folder,
            onnx_bytes,
            meta,
            None,
            lambda engine: check_anomaly_parity(
                engine, val.images, calibration.predictions, tolerance, 10 * tolerance
            ),
            lambda r: (
                f"max |d score| {r.fields['max_score_diff']:.2e}, max |d heat| over half the threshold "
                f"{r.fields['max_heat_diff']:.2e} "
                f"(allowed {tolerance:.1e} and {10 * tolerance:.1e}), {r.differing} decisions differ"
            ),
        )

    def recalibrate(self, bundle: Path, manifest: Manifest, target_escape_rate: float) -> dict[str, Any]:
        raise NotImplementedError("anomaly bundles are not quantized")

    def evaluate(self, request: EvalRequest) -> Report:
        """Image and pixel AUROC, PRO to FPR 0.3, and the plant rates at the bundle's threshold,
        on the bundle through ONNX Runtime; pixel metrics at the model's input size. Plots: ROC,
        PR and confusion, and the heatmap sheet of the best, worst and borderline parts."""
        from zerodefect.inference.engine import Engine
        from zerodefect.training.anomaly_metrics import pixel_auroc, pro_score
        from zerodefect.training.evaluate import add_latency, bundle_fields, save_score_plots, split_samples
        from zerodefect.training.metrics import binary_report

        manifest, plots_dir = request.manifest, request.plots_dir
        engine = Engine.from_bundle(request.bundle, threads=request.threads)
        meta = engine.meta
        samples = split_samples(manifest, request.split)
        paths = [manifest.resolve(s) for s in samples]
        maps, _ = engine.predict_files(paths, progress=request.progress)
        truth = load_masks(manifest, samples, (meta.input.height, meta.input.width))
        plant = binary_report(truth.defective, maps.scores, meta.threshold)
        with_mask = truth.has_mask
        data: dict[str, Any] = {
            **plant,
            "image_auroc": plant["auroc"],
            "pixel_auroc": pixel_auroc(truth.masks[with_mask], maps.heatmaps[with_mask]),
            "pro": pro_score(truth.masks[with_mask], maps.heatmaps[with_mask]),
            "pixel_images": int(with_mask.sum()),
            **bundle_fields(meta, manifest, request.split),
        }
        if int((truth.defective & ~with_mask).sum()):
            data["notes"] = [
                *data["notes"],
                f"{int((truth.defective & ~with_mask).sum())} defective images have no mask: "
                "left out of the pixel metrics",
            ]
        add_latency(data, request.bundle, paths, request.timing_images)
        if plots_dir is not None:
            from zerodefect.inference.preprocess import read_image
            from zerodefect.training.anomaly_plots import save_heatmap_sheet

            save_score_plots(plots_dir, data, truth.defective, maps.scores, samples, meta.name)
            sheet = save_heatmap_sheet(
                plots_dir / "heatmaps.png",
                meta,
                lambda i: engine.prepare(read_image(paths[i])),
                maps.heatmaps,
                truth.masks,
                truth.defective,
                maps.scores,
                [s.path for s in samples],
            )
            data["plots"] = [*data.get("plots", []), str(sheet.path)]
        return self.report_from_json(data)

    def report_from_json(self, data: dict[str, Any]) -> Report:
        headline = {k: data[k] for k in self.headline_keys}
        return Report(self.name, binary_plant(data), headline, {k: v for k, v in data.items() if k != "task"})

    def val_summary(self, val_report: dict[str, Any]) -> dict[str, Any]:
        keys = ("escape_rate", "false_reject_rate", "auroc", "calibrated_for")
        return {k: val_report[k] for k in keys}

    def run_metrics(self, report: Report) -> dict[str, float | None]:
        data = report.data
        return {
            "threshold": report.plant.thresholds["threshold"],
            "val_false_reject_rate": data["val"]["false_reject_rate"],
            "val_escape_rate": data["val"]["escape_rate"],
            "parity_max_heat_diff": data["parity"]["max_heat_diff"],
        }

    def summary_rows(self, report: Report) -> list[tuple[str, float | None]]:
        keys = ("image_auroc", "pixel_auroc", "pro", "escape_rate", "false_reject_rate", "threshold")
        return [(key, report.data.get(key)) for key in keys]

    def detail_tables(self, report: Report) -> list[Table]:
        return []


def check_anomaly_parity(
    engine: Any,
    images: np.ndarray,
    torch_predictions: tuple[np.ndarray, np.ndarray],
    tolerance: float,
    heat_tolerance: float,
) -> ParityReport:
    """ONNX Runtime against torch on the same prepared images: image scores, heatmaps, and the
    decisions at the bundle's threshold.

    Heatmaps are compared where either side reaches half the threshold, the pixels that can
    form a region: near zero, the square root of a nearest-neighbour distance turns the
    runtimes' rounding of |f|^2 + |m|^2 - 2 f.m into up to 1e-3 of the threshold (measured on
    KolektorSDD at 320 px), on pixels that never decide anything; the smoothing spreads some
    of it into their neighbours, hence a looser `heat_tolerance` than the scores'."""
    scores, heatmaps = torch_predictions
    ort_scores, ort_heat = [], []
    for start in range(0, len(images), 16):
        s, h = engine.infer(images[start : start + 16])
        ort_scores.append(s)
        ort_heat.append(h)
    ort_s, ort_h = np.concatenate(ort_scores), np.concatenate(ort_heat)
    threshold = engine.meta.threshold
    relevant = (heatmaps >= threshold / 2) | (ort_h >= threshold / 2)
    score_diff = float(np.max(np.abs(ort_s - scores)))
    heat_diff = float(np.max(np.abs(ort_h - heatmaps)[relevant], initial=0.0))
    differing = int(np.sum((ort_s >= threshold) != (scores >= threshold)))
    return ParityReport(
        len(images),
        differing,
        differing == 0 and score_diff <= tolerance and heat_diff <= heat_tolerance,
        {
            "max_score_diff": score_diff,
            "max_heat_diff": heat_diff,
            "max_heat_diff_anywhere": float(np.max(np.abs(ort_h - heatmaps))),
            "decisions_equal": differing == 0,
        },
        f"export parity on {len(images)} val images: max |d score| {score_diff:.2e}, "
        f"max |d heat| over half the threshold {heat_diff:.2e}, decisions identical: {differing == 0}",
    )
