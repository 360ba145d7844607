"""The one box drawer: Detections onto an image, with class and score labels that never overlap.

Used by the record's overlays (what a reviewer sees) and training's sample sheets, so a box
looks the same wherever a person checks a model. OpenCV only: no torch, so the record and the
station can draw too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zerodefect.inference.result import Detections

Rect = tuple[int, int, int, int]


def place_label(size: tuple[int, int], box: Rect, taken: list[Rect], bounds: tuple[int, int]) -> Rect:
    """A label rectangle near its box that overlaps no label already placed: above the box,
    inside its top, below it, then further down in steps (greedy, the first free spot)."""
    w, h = size
    x1, y1, _, y2 = box
    width, height = bounds
    x = min(max(0, x1), max(0, width - w))
    candidates = [y1 - h - 2, y1 + 2, y2 + 2] + [y2 + 2 + k * (h + 2) for k in range(1, 12)]
    rects = [(x, y, x + w, y + h) for y in (min(max(0, c), max(0, height - h)) for c in candidates)]
    for rect in rects:
        if all(rect[2] <= t[0] or rect[0] >= t[2] or rect[3] <= t[1] or rect[1] >= t[3] for t in taken):
            return rect
    return rects[0]  # a crowded image: overlap rather than lose the label


def draw_detections(
    canvas: np.ndarray,
    det: Detections,
    classes: Sequence[str] | None,
    colour: tuple[int, int, int],
    thickness: int = 2,
    font_scale: float = 0.45,
    scale: float = 1.0,
) -> np.ndarray:
    """Draw `det` (image pixels, times `scale` for an enlarged canvas) on a BGR canvas in place.

    With `classes`, each box gets a "class score" label on white, placed clear of the others;
    the boxes are drawn last, so no label ever hides a box's edge. None draws bare boxes
    (ground truth)."""
    import cv2

    font = cv2.FONT_HERSHEY_SIMPLEX
    rects = [tuple(round(float(v) * scale) for v in box) for box in det.xyxy]
    if classes is not None:
        taken: list[Rect] = []
        bounds = (canvas.shape[1], canvas.shape[0])
        for rect, score, label in zip(rects, det.scores, det.labels(classes), strict=True):
            text = f"{label} {score:.2f}"
            (tw, th), base = cv2.getTextSize(text, font, font_scale, 1)
            spot = place_label((tw + 4, th + base + 4), rect, taken, bounds)
            taken.append(spot)
            cv2.rectangle(canvas, spot[:2], spot[2:], (255, 255, 255), -1)
            cv2.rectangle(canvas, spot[:2], spot[2:], colour, 1)
            cv2.putText(canvas, text, (spot[0] + 2, spot[3] - base - 2), font, font_scale, colour, 1)
    for x1, y1, x2, y2 in rects:
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness)
    return canvas


def blend_heatmap(canvas: np.ndarray, heatmap: np.ndarray, opacity: float = 0.6) -> np.ndarray:
    """Blend a display-scale heatmap ([0, 1], threshold 0.5, any size) over a BGR canvas in
    place, resized to it, in the JET colour map. Each pixel's opacity grows with its heat up
    to the threshold, so good areas keep their own look and every region over the threshold
    is coloured at full `opacity`: the reviewer sees the part, and where the model looked."""
    import cv2

    height, width = canvas.shape[:2]
    heat = np.clip(
        cv2.resize(heatmap.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR), 0, 1
    )
    colour = cv2.applyColorMap(np.round(heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    alpha = (opacity * np.clip(2 * heat, 0, 1))[..., None]
    canvas[:] = np.round(canvas * (1 - alpha) + colour * alpha).astype(np.uint8)
    return canvas
