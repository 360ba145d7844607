"""Defect masks: reading and checking them, and drawing polygon labels into them.

A mask is a single-channel image of the same size as its part image, 0 where the part is good
and one other value (255 as written here, 1 or 255 in other data sets) where it is defective. It
is the truth of an anomaly model's pixel metrics, so a mask that is resized, anti-aliased or
saved as JPEG would silently move those metrics: `mask_problem` refuses them instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

DEFECT = 255


def read_mask(path: Path) -> np.ndarray | str:
    """The mask as uint8 [H, W], or why it cannot be used (missing, undecodable, colour)."""
    if not path.is_file():
        return "mask file missing"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        return "mask is not a decodable image"
    if mask.ndim == 3:
        if not all(np.array_equal(mask[..., 0], mask[..., c]) for c in range(1, min(mask.shape[2], 3))):
            return "mask has colour; expected one channel (0 = good, one value = defect)"
        mask = mask[..., 0]
    return mask


def mask_problem(mask: np.ndarray, image_shape: tuple[int, ...]) -> str | None:
    """Why a mask does not fit its image (other size, more than two values), or None."""
    height, width = image_shape[:2]
    if mask.shape[:2] != (height, width):
        return f"mask is {mask.shape[1]}x{mask.shape[0]}, its image {width}x{height}"
    values = np.unique(mask)
    if len(values[values != 0]) > 1:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        return f"mask is not binary: {len(values)} values ({shown}); expected 0 and one defect value"
    return None


def rasterise(polygons: Sequence[np.ndarray], height: int, width: int) -> np.ndarray:
    """A uint8 mask with the polygons (N x 2 points in pixels) filled with DEFECT.

    Points are pixel centres (the way polygons traced from a mask's contour are written), drawn
    at 1/16 px precision.
    """
    mask = np.zeros((height, width), np.uint8)
    shift = 4
    points = [np.round(np.asarray(p, np.float64) * (1 << shift)).astype(np.int32) for p in polygons]
    cv2.fillPoly(mask, points, DEFECT, lineType=cv2.LINE_8, shift=shift)
    return mask


def boxes_mask(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """A uint8 mask with the boxes ([K, 4] x1, y1, x2, y2 in pixel edges, as the record keeps
    them) filled with DEFECT: every pixel a box touches, clipped to the image."""
    mask = np.zeros((height, width), np.uint8)
    for x1, y1, x2, y2 in np.asarray(boxes, np.float64).reshape(-1, 4):
        left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
        right, bottom = min(width, int(np.ceil(x2))), min(height, int(np.ceil(y2)))
        mask[top:bottom, left:right] = DEFECT
    return mask
