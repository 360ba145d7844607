"""The ONNX Runtime engine: a verified bundle in, verdicts out.

Preprocessing and the operating threshold come from the bundle alone. Sessions run with full
graph optimisation (2-3x faster than BASIC on CPU) and an explicit thread count, so that a
station can pin inference to the cores it owns.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort

from zerodefect.inference.bundle import TTA_VIEWS, BundleError, BundleMeta, load_bundle
from zerodefect.inference.heads import ClassificationHead, DetectionHead, as_head, head_for
from zerodefect.inference.preprocess import read_image, resize
from zerodefect.inference.result import Detections, InspectionResult
from zerodefect.inference.tiling import detect_sliced

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

log = logging.getLogger(__name__)


def make_session(onnx_path: Path, threads: int | None = None) -> ort.InferenceSession:
    """A CPU (or CUDA, when present) session with graph optimisation ALL."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or min(os.cpu_count() or 1, 4)
    options.inter_op_num_threads = 1
    # Idle intra-op threads sleep instead of spinning: a spinning thread holds a core between
    # runs, which a station's HTTP, decoding and outbox threads (and a 2-core box's other
    # processes) need; measured under load on 2 cores: CPU per image -35 to -48 %, latency
    # lower too (docs/profiles/station-overhead.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=providers)


class Engine:
    """Scores images with a bundle's model. Thread-safe: ORT sessions allow concurrent runs."""

    def __init__(self, meta: BundleMeta, onnx_path: Path, threads: int | None = None):
        self.meta = meta
        self.onnx_path = onnx_path
        self.session = make_session(onnx_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.size = (meta.input.height, meta.input.width)
        self.head = head_for(meta)
        if meta.tiling is not None and not isinstance(self.head, DetectionHead):
            raise BundleError(f"{meta.name}: tiling is for detectors, not a {meta.task} model")
        # Images per call that keep memory bounded: TTA bundles run several views per image.
        self.batch_size = max(1, 32 // TTA_VIEWS[meta.tta])

    @classmethod
    def from_bundle(
        cls,
        folder: str | Path,
        threads: int | None = None,
        trusted_keys: Sequence[Ed25519PublicKey] | None = None,
    ) -> Engine:
        """Load and verify a bundle folder: its sha256, and with `trusted_keys` its signature."""
        meta, onnx_path = load_bundle(folder, trusted_keys)
        return cls(meta, onnx_path, threads)

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """RGB uint8 HxWx3 -> the bundle's input size."""
        return resize(image, self.size, self.meta.input.interpolation)

    def infer(self, batch: np.ndarray) -> list[np.ndarray]:
        """Run a prepared uint8 [N, H, W, 3] batch; returns every graph output, batch first."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch)})

    def judge_outputs(
        self, outputs: list[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> list[InspectionResult]:
        """Verdicts for a batch's graph outputs, by the bundle's task head."""
        return self.head.judge(self.meta, self.head.decode(self.meta, outputs, sizes))

    # The task's own terms, for training and evaluation: each asks its head and is refused
    # (BundleError) by a bundle of another task.
    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """A classifier's class probabilities [N, C] for a prepared batch."""
        return as_head(self.meta, self.head, ClassificationHead).decode(self.meta, self.infer(batch), [])

    def defect_scores(self, probabilities: np.ndarray) -> np.ndarray:
        """Defect score per image: 1 - P(good), or the top class probability without a good class."""
        return as_head(self.meta, self.head, ClassificationHead).defect_scores(self.meta, probabilities)

    def class_thresholds(self) -> np.ndarray:
        """A detector's operating threshold of each class, in class order."""
        return as_head(self.meta, self.head, DetectionHead).class_thresholds(self.meta)

    def detections(self, outputs: list[np.ndarray], sizes: Sequence[tuple[int, int]]) -> list[Detections]:
        """A detector's boxes per image, in each original image's pixels (`sizes` = (h, w))."""
        return as_head(self.meta, self.head, DetectionHead).decode(self.meta, outputs, sizes)

    def judge_detections(self, detections: list[Detections]) -> list[InspectionResult]:
        """A detector's verdicts: a part is rejected when any box reaches its class's threshold."""
        return as_head(self.meta, self.head, DetectionHead).judge(self.meta, detections)

    def predictions(self, images: Sequence[np.ndarray]) -> Any:
        """The task's predictions for RGB uint8 images of any size, in each image's own pixels:
        the one scoring path of evaluation, the station and re-scoring. A tiled bundle scores
        each image as overlapping tiles whose boxes are merged (zerodefect.inference.tiling);
        any other, each image resized to the input."""
        tiling = self.meta.tiling
        if tiling is not None:
            return detect_sliced(
                images,
                tiling,
                self.size,
                self.meta.input.interpolation,
                lambda batch: self.detections(self.infer(batch), [self.size] * len(batch)),
                self.batch_size,
                int(self.meta.postprocess["detections_per_img"]),
            )
        parts = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = np.stack([self.prepare(im) for im in chunk])
            parts.append(self.head.decode(self.meta, self.infer(batch), [im.shape[:2] for im in chunk]))
        return self.head.concat(self.meta, parts)

    def predict(self, images: Sequence[np.ndarray]) -> list[InspectionResult]:
        """Judge RGB uint8 images of any size."""
        return self.head.judge(self.meta, self.predictions(images))

    def predict_files(self, paths: Sequence[Path], progress=None) -> tuple[Any, list[tuple[int, int]]]:
        """The task's predictions for image files, read with the shared decoder (a classifier's
        probabilities [N, C], a detector's boxes in each file's own pixels), and the sizes."""
        parts, sizes = [], []
        for start in range(0, len(paths), self.batch_size):
            images = [read_image(p) for p in paths[start : start + self.batch_size]]
            sizes += [im.shape[:2] for im in images]
            parts.append(self.predictions(images))
            if progress:
                progress(len(images))
        return self.head.concat(self.meta, parts), sizes

    def score_files(self, paths: Sequence[Path], progress=None) -> np.ndarray:
        """A classifier's class probabilities [N, C] for image files."""
        as_head(self.meta, self.head, ClassificationHead)
        return self.predict_files(paths, progress)[0]

    def detect_files(
        self, paths: Sequence[Path], progress=None
    ) -> tuple[list[Detections], list[tuple[int, int]]]:
        """A detector's detections for image files, in each file's own pixels, and the sizes."""
        as_head(self.meta, self.head, DetectionHead)
        return self.predict_files(paths, progress)
