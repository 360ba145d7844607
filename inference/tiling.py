"""Sliced inference (the SAHI idea): a large frame scored as overlapping tiles, boxes merged.

At 320 px input a 640 px board keeps a quarter of a small defect's pixels; tiles of the original
image at the model's input size keep all of them, for one forward pass per tile. A bundle's
`tiling` (zerodefect.inference.bundle.Tiling) says how the frame is cut; training cuts its
images with the same `views`, so the model sees at training what it sees on the line.

Boxes from the tiles are shifted back to the frame and merged class by class: a defect in an
overlap is found by two tiles, and one straddling a seam is found in pieces, one per tile. The
merge is SAHI's greedy non-maximum merging by intersection over the smaller box: the best box
absorbs the boxes of other tiles that lie mostly inside it or it inside them, and becomes their
union with those that score alike (GROW_SHARE), which absorbs again until nothing more joins (a seam's two halves join through the tile
that holds the whole defect, whichever of the three scores best). Boxes of one tile were
already separated by the model's own NMS and are not merged. A seam needs an overlap: halves
of a defect that no tile holds whole only touch, and stay two boxes.

The sahi package itself is not used: the slicing and the merge are these few numpy functions,
where sahi would bring its own image, geometry and CLI dependencies to the edge install. No
torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from zerodefect.inference.bundle import Tiling
from zerodefect.inference.preprocess import resize
from zerodefect.inference.result import Detections

# Boxes of two tiles are one defect when their intersection covers this share of the smaller.
MERGE_IOS = 0.5
# A box joins the union only when it scores at least this share of the best box: pieces of one
# defect seen by two tiles score alike, while a weak box over a strong one is noise that would
# stretch it. Measured on the generated frames of tests/test_tiling.py (3-epoch model): mAP@0.5
# train/val/test 0.06/0.42/0.10 when every match joined (SAHI's merge), 0.95/0.75/0.63 at 0.8,
# 0.94/0.74/0.63 when none joined (only suppressed).
GROW_SHARE = 0.8


def _starts(length: int, side: int, overlap: float) -> list[int]:
    """Tile origins along one axis: a step of side * (1 - overlap), the last tile flush with
    the far edge (so every tile is whole and the edge is covered)."""
    if length <= side:
        return [0]
    step = max(1, int(side * (1.0 - overlap)))
    starts = list(range(0, length - side, step))
    return starts + [length - side]


def windows(height: int, width: int, tiling: Tiling) -> np.ndarray:
    """The views of a height x width frame, [K, 4] int xyxy in its pixels: the tiles row by
    row (a side shorter than the tile is taken whole), then the full frame if the tiling asks
    for it."""
    side_y, side_x = min(tiling.tile, height), min(tiling.tile, width)
    wins = [
        (x, y, x + side_x, y + side_y)
        for y in _starts(height, side_y, tiling.overlap)
        for x in _starts(width, side_x, tiling.overlap)
    ]
    if tiling.full_frame and len(wins) > 1:
        wins.append((0, 0, width, height))
    return np.array(wins, np.int64).reshape(-1, 4)


def cut(image: np.ndarray, wins: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """The views of an RGB image at the model's input `size` (h, w): uint8 [K, h, w, 3]."""
    return np.stack([resize(image[y1:y2, x1:x2], size, interpolation) for x1, y1, x2, y2 in wins])


def place(det: Detections, window: np.ndarray, size: tuple[int, int]) -> Detections:
    """A view's detections, in input pixels of `size` (h, w), moved into the frame's pixels."""
    x1, y1, x2, y2 = (float(v) for v in window)
    scaled = det.scaled((x2 - x1) / size[1], (y2 - y1) / size[0])
    scaled.xyxy = scaled.xyxy + np.array([x1, y1, x1, y1], np.float32)
    return scaled


def _ios(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over the smaller of each pair (box, boxes[j])."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return w * h / np.maximum(np.minimum(area, areas), 1e-12)


def merge(parts: Sequence[Detections], limit: int | None = None) -> Detections:
    """One frame's detections from its views' (in frame pixels): greedy merging, best score
    first, of boxes of the same class from different views overlapping by MERGE_IOS of the
    smaller; a merged box is the union of those scoring alike and keeps the best score. At most
    `limit`, best first."""
    if not parts:
        return Detections.empty()
    boxes = np.concatenate([p.xyxy for p in parts]).reshape(-1, 4)
    scores = np.concatenate([p.scores for p in parts])
    labels = np.concatenate([p.class_id for p in parts])
    view = np.repeat(np.arange(len(parts)), [len(p) for p in parts])
    taken = np.zeros(len(boxes), bool)
    out_boxes, keep = [], []
    for i in np.argsort(-scores, kind="stable"):
        if taken[i]:
            continue
        if limit is not None and len(keep) == limit:
            break
        taken[i] = True
        union = boxes[i].copy()
        while True:  # the union grows: a seam's other piece may only overlap the grown box
            group = ~taken & (labels == labels[i]) & (view != view[i])
            group[group] = _ios(union, boxes[group]) >= MERGE_IOS
            if not group.any():
                break
            taken |= group
            grow = group & (scores >= GROW_SHARE * scores[i])
            if grow.any():
                union[:2] = np.minimum(union[:2], boxes[grow, :2].min(axis=0))
                union[2:] = np.maximum(union[2:], boxes[grow, 2:].max(axis=0))
        out_boxes.append(union)
        keep.append(i)
    keep_idx = np.array(keep, np.int64)
    return Detections(np.array(out_boxes, np.float32).reshape(-1, 4), scores[keep_idx], labels[keep_idx])


def detect_sliced(
    images: Sequence[np.ndarray],
    tiling: Tiling,
    size: tuple[int, int],
    interpolation: str,
    detect: Callable[[np.ndarray], list[Detections]],
    batch_size: int,
    limit: int | None = None,
) -> list[Detections]:
    """Each frame's detections in its own pixels: its views cut, scored `batch_size` views per
    `detect` call (uint8 [n, h, w, 3] -> detections in input pixels, e.g. one ONNX Runtime run
    and the bundle's post-processing), placed back and merged."""
    wins = [windows(im.shape[0], im.shape[1], tiling) for im in images]
    owner = np.repeat(np.arange(len(images)), [len(w) for w in wins])
    all_wins = np.concatenate(wins) if wins else np.zeros((0, 4), np.int64)
    found: list[Detections] = []
    for start in range(0, len(all_wins), batch_size):
        stop = min(start + batch_size, len(all_wins))
        batch = np.concatenate(
            [cut(images[owner[k]], all_wins[k : k + 1], size, interpolation) for k in range(start, stop)]
        )
        found += [place(d, all_wins[k], size) for k, d in zip(range(start, stop), detect(batch), strict=True)]
    return merge_views(found, owner, len(images), limit)


def merge_views(
    found: Sequence[Detections], owner: np.ndarray, frames: int, limit: int | None = None
) -> list[Detections]:
    """Per frame, the merge of the views it owns (`owner[k]`: the frame of view k)."""
    return [merge([found[k] for k in np.flatnonzero(owner == f)], limit) for f in range(frames)]
