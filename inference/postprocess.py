"""Detector post-processing in numpy: score filter, per-level top-k, class-wise NMS.

It mirrors torchvision's FCOS `postprocess_detections` step for step, so that the bundle's
dense outputs become the same detections PyTorch gives (export parity checks it). Its
parameters travel in the bundle. No torch here: the edge install stays small.
"""

from __future__ import annotations

import numpy as np

from zerodefect.inference.result import Detections

# Candidates compared at once: a block's IoU matrix, then the kept boxes against the rest.
NMS_BLOCK = 128


def _suppresses(
    x1: np.ndarray,
    y1: np.ndarray,
    x2: np.ndarray,
    y2: np.ndarray,
    areas: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    iou_threshold: float,
) -> np.ndarray:
    """[len(a), len(b)]: does box a[i] suppress box b[j]? torchvision's kernel arithmetic: IoU
    in float32 (a zero union gives NaN, which suppresses nothing), compared in float64."""
    w = np.maximum(0.0, np.minimum(x2[a, None], x2[None, b]) - np.maximum(x1[a, None], x1[None, b]))
    h = np.maximum(0.0, np.minimum(y2[a, None], y2[None, b]) - np.maximum(y1[a, None], y1[None, b]))
    inter = w * h
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / (areas[a, None] + areas[None, b] - inter)
    return iou.astype(np.float64) > iou_threshold


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Greedy NMS; indices kept, highest score first, at most `limit` of them. A box is
    suppressed by a kept box when their IoU is strictly above the threshold (torchvision's rule).

    The same decisions as the one-box-at-a-time loop, in blocks: an early model can pass
    thousands of candidates and keep most of them, and a numpy call per kept box then cost
    more than the graph itself. The first `limit` boxes kept do not depend on later ones, so
    the search stops there.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[order, k]) for k in range(4))
    areas = (x2 - x1) * (y2 - y1)
    n = len(order)
    limit = n if limit is None else limit
    alive = np.ones(n, bool)  # not suppressed by a box kept in an earlier block
    keep: list[int] = []
    for start in range(0, n, NMS_BLOCK):
        stop = start + NMS_BLOCK
        block = start + np.flatnonzero(alive[start:stop])
        if len(keep) >= limit or not block.size:
            continue
        over = _suppresses(x1, y1, x2, y2, areas, block, block, iou_threshold)
        free = np.ones(len(block), bool)
        kept = []
        for r in range(len(block)):
            if free[r]:
                kept.append(r)
                if len(keep) + len(kept) == limit:
                    break
                free[r + 1 :] &= ~over[r, r + 1 :]
        keep.extend(block[kept].tolist())
        rest = stop + np.flatnonzero(alive[stop:])
        if len(keep) < limit and rest.size:
            alive[rest] = ~_suppresses(x1, y1, x2, y2, areas, block[kept], rest, iou_threshold).any(axis=0)
    return order[np.array(keep, dtype=np.int64)]


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, iou_threshold: float, limit: int | None = None
) -> np.ndarray:
    """NMS within each class; indices kept, sorted by decreasing score, the first `limit`.

    Each class keeps at most `limit` boxes: a class's later boxes score no higher than its
    first `limit`, so they never reach the overall first `limit`.
    """
    keep = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        keep.append(members[nms(boxes[members], scores[members], iou_threshold, limit)])
    if not keep:
        return np.zeros(0, np.int64)
    kept = np.concatenate(keep)
    return kept[np.argsort(-scores[kept], kind="stable")][:limit]


def detections_from_dense(
    boxes: np.ndarray,
    scores: np.ndarray,
    level_sizes: list[int],
    score_thresh: float,
    nms_thresh: float,
    topk_candidates: int,
    detections_per_img: int,
) -> Detections:
    """One image's dense outputs (boxes [A, 4], scores [A, C]) -> its detections."""
    num_classes = scores.shape[1]
    picked_boxes, picked_scores, picked_labels = [], [], []
    start = 0
    for size in level_sizes:
        level_scores = scores[start : start + size].reshape(-1)
        candidates = np.flatnonzero(level_scores > score_thresh)
        if candidates.size > topk_candidates:
            top = np.argpartition(-level_scores[candidates], topk_candidates - 1)[:topk_candidates]
            candidates = candidates[top]
        candidates = candidates[np.argsort(-level_scores[candidates], kind="stable")]
        picked_boxes.append(boxes[start + candidates // num_classes])
        picked_scores.append(level_scores[candidates])
        picked_labels.append(candidates % num_classes)
        start += size
    all_boxes = np.concatenate(picked_boxes).astype(np.float32)
    all_scores = np.concatenate(picked_scores).astype(np.float32)
    all_labels = np.concatenate(picked_labels).astype(np.int64)
    keep = batched_nms(all_boxes, all_scores, all_labels, nms_thresh, detections_per_img)
    return Detections(all_boxes[keep], all_scores[keep], all_labels[keep])


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes [K, 4] and [M, 4] -> [K, M]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)


def class_thresholds(classes: list[str], per_class: dict[str, float], default: float) -> np.ndarray:
    """Thresholds in class-index order; a class the bundle does not list gets `default`."""
    return np.array([per_class.get(c, default) for c in classes], np.float64)


def above(det: Detections, thresholds: np.ndarray) -> Detections:
    """The detections at or above their class's threshold that have an area (a box clipped to
    nothing at the image edge shows no defect)."""
    if not len(det):
        return det
    area = (det.xyxy[:, 2] > det.xyxy[:, 0]) & (det.xyxy[:, 3] > det.xyxy[:, 1])
    keep = (det.scores >= thresholds[det.class_id]) & area
    return Detections(det.xyxy[keep], det.scores[keep], det.class_id[keep])
