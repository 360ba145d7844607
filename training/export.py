"""Export a trained model to a self-describing bundle, refusing any export ONNX Runtime
cannot reproduce.

The graph takes uint8 NHWC pixels and returns class probabilities: normalisation, softmax or
sigmoid, and test-time augmentation all live inside it, so the edge only decodes and resizes.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from zerodefect.inference.bundle import BundleMeta, discard_bundle, write_bundle
from zerodefect.inference.engine import Engine
from zerodefect.inference.postprocess import above, box_iou
from zerodefect.inference.result import Detections
from zerodefect.models.classifier import InspectionClassifier, static_same_padding
from zerodefect.training.tasks.base import ParityReport

log = logging.getLogger(__name__)


class ExportParityError(RuntimeError):
    """ONNX Runtime does not reproduce PyTorch within tolerance; the bundle is not written."""


def export_onnx(
    model: nn.Module,
    height: int,
    width: int,
    opset: int = 17,
    output_names: tuple[str, ...] = ("probabilities",),
) -> bytes:
    """Trace a classifier (with its TTA) or a detector to ONNX with a dynamic batch dimension."""
    model = copy.deepcopy(model).cpu().eval()
    static_same_padding(model, height, width)
    dummy = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript-based exporter announces its deprecation; it is the one that also
        # exports torchvision's detectors (NMS), so both tasks share one exporter.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=list(output_names),
            dynamic_axes={name: {0: "batch"} for name in ("images", *output_names)},
        )
    return buffer.getvalue()


def check_parity(
    engine: Engine, images: np.ndarray, torch_probabilities: np.ndarray, atol: float
) -> ParityReport:
    """Compare ONNX Runtime against PyTorch on the same prepared images."""
    ort_probs = np.concatenate([engine.probabilities(images[i : i + 32]) for i in range(0, len(images), 32)])
    diff = float(np.max(np.abs(ort_probs - torch_probabilities))) if len(images) else 0.0
    threshold = engine.meta.threshold
    ort_reject = engine.defect_scores(ort_probs) >= threshold
    torch_reject = engine.defect_scores(torch_probabilities) >= threshold
    differing = int(np.sum(ort_reject != torch_reject))
    return ParityReport(
        len(images),
        differing,
        diff <= atol and differing == 0,
        {"max_abs_diff": diff, "decisions_equal": differing == 0},
        f"export parity on {len(images)} val images: max |dp| {diff:.2e}, decisions identical: {differing == 0}",
    )


def export_bundle(
    model: InspectionClassifier,
    meta: BundleMeta,
    folder: Path,
    parity_images: np.ndarray,
    torch_probabilities: np.ndarray,
    opset: int = 17,
    atol: float = 1e-4,
    signing_key: Ed25519PrivateKey | None = None,
) -> ParityReport:
    """Write the bundle to `folder`, signed with `signing_key` (default: the configured key),
    only if ORT matches PyTorch on `parity_images`.

    Raises ExportParityError (and removes the half-written bundle) otherwise.
    """
    onnx_bytes = export_onnx(model, meta.input.height, meta.input.width, opset)
    return _write_verified(
        folder,
        onnx_bytes,
        meta,
        signing_key,
        lambda engine: check_parity(engine, parity_images, torch_probabilities, atol),
        lambda r: (
            f"max |dp| {r.fields['max_abs_diff']:.2e} (allowed {atol:.0e}), {r.differing} decisions differ"
        ),
    )


def _write_verified(
    folder: Path,
    onnx_bytes: bytes,
    meta: BundleMeta,
    signing_key: Ed25519PrivateKey | None,
    check: Callable[[Engine], ParityReport],
    failure: Callable[[ParityReport], str],
) -> ParityReport:
    """Write the bundle, run the parity `check` on it through ONNX Runtime, and remove it again
    (ExportParityError saying `failure`) unless it passes: no task ships an unverified bundle."""
    write_bundle(folder, onnx_bytes, meta, signing_key)
    report = check(Engine.from_bundle(folder))
    log.info("export parity: %s", report.to_json())
    if not report.ok:
        discard_bundle(folder)
        raise ExportParityError(
            f"ONNX Runtime differs from PyTorch on {report.images} validation images: {failure(report)}"
        )
    return report


def check_detection_parity(
    engine: Engine, images: np.ndarray, torch_detections: list[Detections], min_iou: float = 0.99
) -> ParityReport:
    """ONNX Runtime plus numpy post-processing against torchvision, on prepared images.

    For every image, the detections at or above their class thresholds must be the same set:
    same count and classes, each torch box matched by an ORT box of its class with IoU >= min_iou.
    """
    size = engine.size
    ort_detections: list[Detections] = []
    for start in range(0, len(images), 16):
        batch = images[start : start + 16]
        ort_detections += engine.detections(engine.infer(batch), [size] * len(batch))
    thresholds = engine.class_thresholds()
    worst_iou, worst_score, differing, compared = 1.0, 0.0, 0, 0
    for mine_all, ref_all in zip(ort_detections, torch_detections, strict=True):
        mine, ref = above(mine_all, thresholds), above(ref_all, thresholds)
        if len(mine) != len(ref) or sorted(mine.class_id) != sorted(ref.class_id):
            differing += 1
            continue
        ious = box_iou(ref.xyxy, mine.xyxy)
        ious = np.where(ref.class_id[:, None] == mine.class_id[None, :], ious, -1.0)
        taken = np.zeros(len(mine), bool)
        for i in np.argsort(-ref.scores, kind="stable"):  # one ORT box per torch box
            j = int(np.argmax(np.where(taken, -1.0, ious[i])))
            taken[j] = True
            worst_iou = min(worst_iou, float(ious[i, j]))
            worst_score = max(worst_score, abs(float(ref.scores[i] - mine.scores[j])))
        compared += len(ref)
    return ParityReport(
        len(images),
        differing,
        differing == 0 and worst_iou >= min_iou,
        {
            "compared_detections": compared,
            "min_matched_iou": worst_iou,
            "max_score_diff": worst_score,
            "differing_images": differing,
        },
        f"export parity on {len(images)} val images: {compared} detections over threshold, "
        f"worst matched IoU {worst_iou:.5f}, images differing {differing}",
    )


def export_detector_bundle(
    model: nn.Module,
    meta: BundleMeta,
    folder: Path,
    parity_images: np.ndarray,
    torch_detections: list[Detections],
    opset: int = 17,
    min_iou: float = 0.99,
    signing_key: Ed25519PrivateKey | None = None,
) -> ParityReport:
    """Write a signed detector bundle only if ORT + numpy post-processing reproduce torchvision."""
    onnx_bytes = export_onnx(model, meta.input.height, meta.input.width, opset, ("boxes", "scores"))
    return _write_verified(
        folder,
        onnx_bytes,
        meta,
        signing_key,
        lambda engine: check_detection_parity(engine, parity_images, torch_detections, min_iou),
        lambda r: (
            f"{r.differing} images with different detections over threshold, "
            f"worst matched box IoU {r.fields['min_matched_iou']:.4f} (needed {min_iou})"
        ),
    )
