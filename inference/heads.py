"""One inference head per task: what a bundle's graph outputs mean, and how a part is judged.

The engine runs the graph; the head named by the bundle's `task` turns the outputs into
per-image predictions (a classifier's class probabilities, a detector's boxes) and those into
verdicts. A new task adds one head here and one entry in `HEADS`; the engine, the station and
the benches do not change. Heads are stateless and read the bundle's metadata on every call,
so a threshold changed in the metadata applies at once. No torch here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np

from zerodefect.inference.bundle import BundleError, BundleMeta
from zerodefect.inference.postprocess import above, class_thresholds, detections_from_dense
from zerodefect.inference.result import Detections, InspectionResult

Sizes = Sequence[tuple[int, int]]
H = TypeVar("H")


class Head(Protocol):
    """What the engine asks of a task. `Predictions` is the task's batch form (see `concat`)."""

    # Whether the task's predictions (and so its training data) are boxes.
    boxes: bool

    def decode(self, meta: BundleMeta, outputs: list[np.ndarray], sizes: Sizes) -> Any:
        """A batch's graph outputs -> its predictions, in each original image's pixels
        (`sizes` = (h, w) per image)."""
        ...

    def concat(self, meta: BundleMeta, parts: list[Any]) -> Any:
        """The predictions of several batches as one (also for no batch at all)."""
        ...

    def judge(self, meta: BundleMeta, predictions: Any) -> list[InspectionResult]:
        """A verdict per image at the bundle's operating threshold(s)."""
        ...


class ClassificationHead:
    """Class probabilities [N, C]; a part is rejected when its defect score reaches the
    threshold: 1 - P(good), or the top class probability without a good class."""

    boxes = False

    def decode(self, meta: BundleMeta, outputs: list[np.ndarray], sizes: Sizes) -> np.ndarray:
        return outputs[0]

    def concat(self, meta: BundleMeta, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros((0, len(meta.classes)), np.float32)

    def defect_scores(self, meta: BundleMeta, probabilities: np.ndarray) -> np.ndarray:
        """Defect score per image: 1 - P(good), or the top class probability without a good class."""
        if meta.good_class:
            return 1.0 - probabilities[:, meta.classes.index(meta.good_class)]
        return probabilities.max(axis=1)

    def judge(self, meta: BundleMeta, probabilities: np.ndarray) -> list[InspectionResult]:
        scores = self.defect_scores(meta, probabilities)
        classes = meta.classes
        defect_idx = [i for i, c in enumerate(classes) if c != meta.good_class]
        results = []
        for probs, score in zip(probabilities, scores, strict=True):
            reject = bool(score >= meta.threshold)
            top = max(defect_idx, key=lambda i: probs[i]) if defect_idx else None
            results.append(
                InspectionResult(
                    verdict="reject" if reject else "pass",
                    score=float(score),
                    threshold=meta.threshold,
                    defect_class=classes[top] if reject and top is not None else None,
                    class_scores={c: float(p) for c, p in zip(classes, probs, strict=True)},
                )
            )
        return results


class DetectionHead:
    """Boxes per image (dense outputs through the bundle's post-processing); a part is rejected
    when any box reaches its class's threshold."""

    boxes = True

    def decode(self, meta: BundleMeta, outputs: list[np.ndarray], sizes: Sizes) -> list[Detections]:
        """Every detection above the bundle's score floor is kept (mAP needs them); the
        operating thresholds are applied by `judge`."""
        boxes, scores = outputs
        post = meta.postprocess
        height, width = meta.input.height, meta.input.width
        out = []
        for i, (h, w) in enumerate(sizes):
            det = detections_from_dense(
                boxes[i],
                scores[i],
                post["level_sizes"],
                post["score_thresh"],
                post["nms_thresh"],
                post["topk_candidates"],
                post["detections_per_img"],
            )
            out.append(det.scaled(w / width, h / height))
        return out

    def concat(self, meta: BundleMeta, parts: list[list[Detections]]) -> list[Detections]:
        return [det for part in parts for det in part]

    def class_thresholds(self, meta: BundleMeta) -> np.ndarray:
        """The operating threshold of each class, in class order."""
        return class_thresholds(meta.classes, meta.class_thresholds, meta.threshold)

    def judge(self, meta: BundleMeta, detections: list[Detections]) -> list[InspectionResult]:
        """The deciding detection is the one furthest above (or least below) its threshold; its
        score, threshold and class describe the part. Only detections at or above their class
        threshold are kept in the result: they are the defects the line acts on."""
        classes = meta.classes
        thresholds = self.class_thresholds(meta)
        results = []
        for det in detections:
            kept = above(det, thresholds)
            limits = thresholds[det.class_id] if len(det) else np.zeros(0)
            class_scores = {c: 0.0 for c in classes}
            for c, sc in zip(det.class_id, det.scores, strict=True):
                class_scores[classes[c]] = max(class_scores[classes[c]], float(sc))
            if len(kept):  # the box furthest over its threshold decides
                top = int(np.argmax(kept.scores - thresholds[kept.class_id]))
                score, cls = float(kept.scores[top]), classes[kept.class_id[top]]
                threshold = float(thresholds[kept.class_id[top]])
            elif len(det):  # the box closest to its threshold
                top = int(np.argmax(det.scores - limits))
                score, threshold, cls = float(det.scores[top]), float(limits[top]), None
            else:
                score, threshold, cls = 0.0, float(thresholds.min()), None
            reject = len(kept) > 0
            results.append(
                InspectionResult(
                    verdict="reject" if reject else "pass",
                    score=score,
                    threshold=threshold,
                    defect_class=cls if reject else None,
                    class_scores=class_scores,
                    detections=kept,
                )
            )
        return results


@dataclass
class AnomalyMaps:
    """An anomaly model's batch: image scores [N], heatmaps [N, h, w] at the model's input
    size (feature-distance units, the threshold's), and each original image's (h, w)."""

    scores: np.ndarray
    heatmaps: np.ndarray
    sizes: list[tuple[int, int]]


class AnomalyHead:
    """An image score and a heatmap per image (PatchCore); a part is rejected when its score,
    the heatmap's maximum, reaches the threshold. A rejected part's defects are the heatmap's
    connected regions at or over the threshold, boxed in the image's own pixels and scored by
    their peak on the display scale (threshold 0.5, in [0, 1] as the record's defect scores
    are), so the record, the andon and the dashboard take them like a detector's boxes."""

    boxes = False

    def decode(self, meta: BundleMeta, outputs: list[np.ndarray], sizes: Sizes) -> AnomalyMaps:
        scores, heatmaps = outputs
        return AnomalyMaps(scores, heatmaps, [tuple(s) for s in sizes])

    def concat(self, meta: BundleMeta, parts: list[AnomalyMaps]) -> AnomalyMaps:
        if not parts:
            empty = np.zeros((0, meta.input.height, meta.input.width), np.float32)
            return AnomalyMaps(np.zeros(0, np.float32), empty, [])
        return AnomalyMaps(
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.heatmaps for p in parts]),
            [s for p in parts for s in p.sizes],
        )

    def regions(self, meta: BundleMeta, heatmap: np.ndarray, size: tuple[int, int]) -> Detections:
        """Connected regions (8-connectivity) of the heatmap at or over the threshold, smaller
        ones than the bundle's min_region_pixels left out unless one holds the peak."""
        over = (heatmap >= meta.threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(over, connectivity=8)
        if count <= 1:
            return Detections.empty()
        peak = labels.flat[int(np.argmax(heatmap))]
        min_pixels = int(meta.postprocess.get("min_region_pixels", 1))
        region_class = meta.classes.index(meta.postprocess["region_class"])
        # Each region's peak in one pass over the pixels (not one mask per region: a noisy
        # heatmap on the line can have many regions).
        peaks = np.full(count, -np.inf, np.float32)
        np.maximum.at(peaks, labels.ravel(), heatmap.ravel())
        boxes, scores = [], []
        for k in range(1, count):
            x, y, w, h, area = stats[k]
            if area < min_pixels and k != peak:
                continue
            boxes.append([x, y, x + w, y + h])
            scores.append(float(self.display(meta, peaks[k])))
        height, width = heatmap.shape
        found = Detections(np.array(boxes, np.float32), np.array(scores), np.full(len(boxes), region_class))
        return found.scaled(size[1] / width, size[0] / height)

    def display(self, meta: BundleMeta, heatmap: np.ndarray | float) -> np.ndarray:
        """The heatmap for people, in [0, 1] with the threshold at 0.5: the bundle's good-part
        floor (postprocess heat_floor, from val) maps to 0, twice the way to threshold to 1."""
        floor = float(meta.postprocess.get("heat_floor", 0.0))
        span = max(meta.threshold - floor, 1e-12)
        return np.clip((heatmap - floor) / (2 * span), 0.0, 1.0).astype(np.float32)

    def judge(self, meta: BundleMeta, maps: AnomalyMaps) -> list[InspectionResult]:
        results = []
        defect = meta.postprocess.get("region_class")
        for score, heatmap, size in zip(maps.scores, maps.heatmaps, maps.sizes, strict=True):
            reject = bool(score >= meta.threshold)
            results.append(
                InspectionResult(
                    verdict="reject" if reject else "pass",
                    score=float(score),
                    threshold=meta.threshold,
                    defect_class=defect if reject else None,
                    class_scores={defect: float(score)} if defect else {},
                    detections=self.regions(meta, heatmap, size) if reject else Detections.empty(),
                    heatmap=self.display(meta, heatmap),
                )
            )
        return results


# The registry: a bundle's `task` -> its head.
HEADS: dict[str, Head] = {
    "classification": ClassificationHead(),
    "detection": DetectionHead(),
    "anomaly": AnomalyHead(),
}


def head_for(meta: BundleMeta) -> Head:
    """The head of a bundle's task; a task this install cannot serve is refused by name."""
    head = HEADS.get(meta.task)
    if head is None:
        raise BundleError(f"{meta.name}: no inference head for task {meta.task!r}; known: {', '.join(HEADS)}")
    return head


def as_head(meta: BundleMeta, head: Head, kind: type[H]) -> H:
    """`head` as a `kind`, or a BundleError saying what the model gives instead (a detector
    asked for class probabilities)."""
    if not isinstance(head, kind):
        raise BundleError(f"{meta.name} is a {meta.task} model: it has no {kind.__name__}")
    return head
