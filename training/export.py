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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from zerodefect.inference.engine import Engine
from zerodefect.models.bundle import BundleMeta, write_bundle
from zerodefect.models.classifier import InspectionClassifier, static_same_padding

log = logging.getLogger(__name__)


class ExportParityError(RuntimeError):
    """ONNX Runtime does not reproduce PyTorch within tolerance; the bundle is not written."""


@dataclass
class ParityReport:
    images: int
    max_abs_diff: float
    decisions_equal: bool
    differing_decisions: int
    atol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol and self.decisions_equal


def export_onnx(model: InspectionClassifier, height: int, width: int, opset: int = 17) -> bytes:
    """Trace the classifier (with its TTA) to ONNX with a dynamic batch dimension."""
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
            output_names=["probabilities"],
            dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}},
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
    return ParityReport(len(images), diff, differing == 0, differing, atol)


def export_bundle(
    model: InspectionClassifier,
    meta: BundleMeta,
    folder: Path,
    parity_images: np.ndarray,
    torch_probabilities: np.ndarray,
    opset: int = 17,
    atol: float = 1e-4,
) -> ParityReport:
    """Write the bundle to `folder` only if ORT matches PyTorch on `parity_images`.

    Raises ExportParityError (and removes the half-written bundle) otherwise.
    """
    onnx_bytes = export_onnx(model, meta.input.height, meta.input.width, opset)
    write_bundle(folder, onnx_bytes, meta)
    engine = Engine.from_bundle(folder)
    report = check_parity(engine, parity_images, torch_probabilities, atol)
    log.info("export parity: %s", asdict(report))
    if not report.ok:
        for name in ("model.onnx", "bundle.json"):
            (folder / name).unlink(missing_ok=True)
        raise ExportParityError(
            f"ONNX Runtime differs from PyTorch on {report.images} validation images: max |dp| "
            f"{report.max_abs_diff:.2e} (allowed {atol:.0e}), {report.differing_decisions} decisions differ"
        )
    return report
