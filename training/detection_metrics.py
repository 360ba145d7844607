"""Detector metrics: COCO mAP by pycocotools, and the plant's part-level view.

mAP says how well boxes are found and placed; the line acts on parts. A part is rejected when
any detection reaches its class's threshold, so the plant numbers are the part-level escape
rate (a defective part with no detection over threshold) and false-reject rate (a clean part
with one). Per-class thresholds are calibrated on the validation split only.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np

from zerodefect.inference.postprocess import above, box_iou
from zerodefect.inference.result import Detections
from zerodefect.training.metrics import rate_notes, ratio

log = logging.getLogger(__name__)


def coco_map(
    truths: list[Detections], detections: list[Detections], classes: list[str], sizes: list[tuple[int, int]]
) -> dict[str, Any]:
    """COCO mAP@0.5 and mAP@[.5:.95] (maxDets 100), per-class AP and PR curves at IoU 0.5.

    Ground truth is Detections with score 1; `sizes` are the images' (h, w), beside them."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, results = [], [], []
    for image_id, (gt, det, size) in enumerate(zip(truths, detections, sizes, strict=True)):
        images.append({"id": image_id, "height": size[0], "width": size[1]})
        for box, label in zip(gt.xyxy, gt.class_id, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
        for box, score, label in zip(det.xyxy, det.scores, det.class_id, strict=True):
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(label),
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "score": float(score),
                }
            )
    known = {int(a["category_id"]) for a in annotations}
    empty = {
        "map50": 0.0,
        "map50_95": 0.0,
        "per_class_ap": {c: 0.0 if i in known else None for i, c in enumerate(classes)},
        "per_class_ap50_95": {c: 0.0 if i in known else None for i, c in enumerate(classes)},
        "pr_curves": {},
    }
    if not annotations or not results:
        return empty
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = COCO()
        coco.dataset = {
            "info": {},
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i, "name": c} for i, c in enumerate(classes)],
        }
        coco.createIndex()
        evaluation = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    # precision: [IoU thresholds 0.5:0.95, 101 recall points, classes, area ranges, max dets]
    precision = evaluation.eval["precision"]
    per_class, per_class_all, curves = {}, {}, {}
    recall_points = np.linspace(0, 1, 101)
    for k, name in enumerate(classes):
        at50 = precision[0, :, k, 0, 2]
        everything = precision[:, :, k, 0, 2]
        per_class[name] = float(at50[at50 > -1].mean()) if (at50 > -1).any() else None
        per_class_all[name] = float(everything[everything > -1].mean()) if (everything > -1).any() else None
        if (at50 > -1).any():
            curves[name] = {"recall": recall_points.tolist(), "precision": np.clip(at50, 0, None).tolist()}
    return {
        "map50": float(evaluation.stats[1]),
        "map50_95": float(evaluation.stats[0]),
        "per_class_ap": per_class,
        "per_class_ap50_95": per_class_all,
        "pr_curves": curves,
    }


def match_boxes(gt: Detections, det: Detections, iou: float = 0.5) -> tuple[int, int, int]:
    """Greedy same-class matching by score: (true positives, false positives, missed boxes)."""
    order = np.argsort(-det.scores, kind="stable")
    taken = np.zeros(len(gt), bool)
    overlaps = box_iou(det.xyxy, gt.xyxy)
    tp = 0
    for i in order:
        candidates = np.flatnonzero((gt.class_id == det.class_id[i]) & ~taken)
        if candidates.size:
            best = candidates[np.argmax(overlaps[i, candidates])]
            if overlaps[i, best] >= iou:
                taken[best] = True
                tp += 1
    return tp, len(det) - tp, len(gt) - tp


def part_report(
    truths: list[Detections], detections: list[Detections], thresholds: np.ndarray
) -> dict[str, Any]:
    """Part-level escape and false-reject rates, and box precision/recall, at the thresholds.

    A part with any true box is defective."""
    rejected = np.array([len(above(d, thresholds)) > 0 for d in detections], bool)
    defective = np.array([len(gt) > 0 for gt in truths], bool)
    tp = fp = missed = 0
    for gt, det in zip(truths, detections, strict=True):
        a, b, c = match_boxes(gt, above(det, thresholds))
        tp, fp, missed = tp + a, fp + b, missed + c
    n_bad, n_good = int(defective.sum()), int((~defective).sum())
    escapes = int((defective & ~rejected).sum())
    false_rejects = int((~defective & rejected).sum())
    return {
        "images": len(truths),
        "defective_images": n_bad,
        "clean_images": n_good,
        "escapes": escapes,
        "false_rejects": false_rejects,
        "escape_rate": ratio(escapes, n_bad),
        # Undefined without clean parts (NEU-DET has none): reported as null, not as 0.
        "false_reject_rate": ratio(false_rejects, n_good),
        "notes": rate_notes(n_bad, n_good),
        "box_precision": ratio(tp, tp + fp),
        "box_recall": ratio(tp, tp + missed),
        "false_detections_per_image": fp / max(len(truths), 1),
    }


def calibrate_class_thresholds(
    truths: list[Detections],
    detections: list[Detections],
    num_classes: int,
    target_escape_rate: float,
) -> np.ndarray:
    """Per-class score thresholds from the validation split.

    Each class first gets the threshold that maximises its box F1 (IoU 0.5), the usual
    operating point of a detector. If more defective parts than the target would then pass
    with no detection at all, every threshold is lowered by the same factor until the part
    escape rate is within the target: escapes cost more than false alarms.
    """
    thresholds = np.full(num_classes, 0.5)
    for c in range(num_classes):
        scores = np.unique(np.concatenate([d.scores[d.class_id == c] for d in detections] or [np.zeros(0)]))
        # Midpoints between neighbouring scores: no validation detection sits on a threshold,
        # so a runtime that differs in the sixth decimal keeps the same detections.
        candidates = (scores[1:] + scores[:-1]) / 2 if len(scores) > 1 else scores
        # A class never found on val keeps 0.5; among equal F1, the higher threshold wins.
        best, best_f1 = 0.5, 0.0
        for t in candidates[:: max(1, len(candidates) // 200)]:
            tp = fp = missed = 0
            for gt, det in zip(truths, detections, strict=True):
                keep = (det.class_id == c) & (det.scores >= t)
                a, b, m = match_boxes(gt[gt.class_id == c], det[keep])
                tp, fp, missed = tp + a, fp + b, missed + m
            f1 = 2 * tp / (2 * tp + fp + missed) if tp else 0.0
            if tp and f1 >= best_f1:
                best, best_f1 = float(t), f1
        thresholds[c] = best
    scaled = thresholds
    for factor in np.linspace(1.0, 0.05, 20):
        scaled = _between_scores(thresholds * factor, detections)
        escape = part_report(truths, detections, scaled)["escape_rate"]
        if escape is None or escape <= target_escape_rate:
            return scaled
    log.warning(
        "val escape rate stays above the target %.3f even at 5%% of the F1 thresholds", target_escape_rate
    )
    return scaled


def _between_scores(thresholds: np.ndarray, detections: list[Detections]) -> np.ndarray:
    """Move each class threshold to the midpoint between the val scores around it.

    The same detections stay over it, and none sits on it: a runtime that differs in the sixth
    decimal (ONNX Runtime against PyTorch) keeps every val decision.
    """
    out = thresholds.copy()
    for c, t in enumerate(thresholds):
        scores = np.unique(np.concatenate([d.scores[d.class_id == c] for d in detections] or [np.zeros(0)]))
        i = int(np.searchsorted(scores, t))
        if 0 < i < len(scores):
            out[c] = (scores[i - 1] + scores[i]) / 2
        elif i == 0 and len(scores):
            out[c] = min(t, scores[0] / 2)
    return out
