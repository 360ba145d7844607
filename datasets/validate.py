"""Check a whole dataset before training starts, and fingerprint it.

Every image and mask is opened once here, so a missing file, a corrupt image, an unknown label,
a box outside its image or a mask that does not fit its image (other size, not binary) stops the
run before the first epoch, with every offending file listed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from zerodefect.datasets.manifest import SPLITS, DatasetError, Manifest, file_sha256
from zerodefect.datasets.masks import mask_problem, read_mask
from zerodefect.inference.preprocess import ImageDecodeError, read_image

# A box edge may overshoot the image by up to 1 % of that side, or 2 px on small images, and is
# then clipped to the edge: exporters round normalised coordinates (YOLO's six decimals give
# -0.00032) and convert 1-based VOC pixels, so a box drawn to the border lands a little outside.
# A box further out was drawn on another image size or is plainly wrong, and is refused.
EDGE_TOLERANCE_SHARE = 0.01
EDGE_TOLERANCE_PX = 2.0


def edge_tolerance(side: int) -> float:
    """How far (px) a box edge may overshoot an image side of `side` px and still be clipped."""
    return max(EDGE_TOLERANCE_PX, EDGE_TOLERANCE_SHARE * side)


@dataclass
class ClippedBoxes:
    """Boxes brought inside their image: `boxes` [K, 4] clipped, `clipped` how many moved,
    `problems` one message per box really outside or empty (those boxes are left as given)."""

    boxes: np.ndarray
    clipped: int
    problems: list[str]


def clip_boxes(
    xyxy: np.ndarray, labels: list[str], width: int, height: int, tolerate: bool = True
) -> ClippedBoxes:
    """The one box check: every box importer (YOLO, COCO, VOC) runs it on an image's boxes, and
    `validate` (with tolerate=False: a manifest's boxes must already be inside) on every row.

    A box overshooting an edge by at most `edge_tolerance` is clipped to it and counted; one
    further out, or empty (x1 >= x2 or y1 >= y2 after clipping), is a problem naming it, so
    the caller can refuse it with its file.
    """
    boxes = np.asarray(xyxy, np.float64).reshape(-1, 4)
    tol_x, tol_y = (edge_tolerance(width), edge_tolerance(height)) if tolerate else (0.0, 0.0)
    low = np.array([-tol_x, -tol_y, -tol_x, -tol_y])
    high = np.array([width + tol_x, height + tol_y, width + tol_x, height + tol_y])
    clipped = np.clip(boxes, 0, [width, height, width, height])
    within = np.all((boxes >= low) & (boxes <= high), axis=1)
    usable = within & (clipped[:, 0] < clipped[:, 2]) & (clipped[:, 1] < clipped[:, 3])
    how_far = f" (by more than {tol_x:g} x {tol_y:g} px)" if tolerate else ""
    problems = [
        f"box {labels[i]} [{', '.join(map(str, boxes[i].astype(np.float32)))}] is outside the "
        f"{width}x{height} image{how_far} or empty"
        for i in np.flatnonzero(~usable)
    ]
    moved = usable & np.any(clipped != boxes, axis=1)
    result = np.where(usable[:, None], clipped, boxes).astype(np.float32)
    return ClippedBoxes(result, int(moved.sum()), problems)


def clip_note(clipped: int, images: int) -> str:
    """The import's line about clipped boxes."""
    return (
        f"{clipped} boxes in {images} images overshot the image edge by at most "
        f"{EDGE_TOLERANCE_SHARE:.0%} of the side (or {EDGE_TOLERANCE_PX:g} px) and were clipped to it"
    )


@dataclass
class ValidationReport:
    dataset_hash: str
    images: int
    counts: dict[str, dict[str, int]]


def validate(manifest: Manifest, require_splits: bool = True) -> ValidationReport:
    """Validate every row and image; raise DatasetError listing all problems at once.

    The dataset hash covers the header, every row and every image's and mask's bytes, so a
    changed pixel, label, box, mask or split gives a different hash.
    """
    problems: list[tuple[str, str]] = []
    known = set(manifest.classes)
    seen: set[str] = set()
    digest = hashlib.sha256(
        json.dumps(
            {k: manifest.header()[k] for k in ("task", "classes", "good_class")}, sort_keys=True
        ).encode()
    )
    for sample in sorted(manifest.samples, key=lambda s: s.path):
        path = manifest.resolve(sample)
        where = str(path)
        if sample.path in seen:
            problems.append((where, "listed twice"))
        seen.add(sample.path)
        if require_splits and sample.split not in SPLITS:
            problems.append((where, f"split {sample.split!r} is not one of {SPLITS}"))
        for label in sample.labels:
            if label not in known:
                problems.append((where, f"unknown label {label!r} (classes: {manifest.classes})"))
        # An image without boxes is labelled as a whole: one class, or none for a clean part
        # of a manifest without a good class (a detector's).
        if not len(sample.boxes) and (len(sample.labels) > 1 or (manifest.good_class and not sample.labels)):
            problems.append((where, f"needs exactly one label, has {sample.labels}"))
        try:
            image = read_image(path)
        except ImageDecodeError as exc:
            problems.append((where, "missing file" if not path.exists() else str(exc).split(": ")[-1]))
            continue
        height, width = image.shape[:2]
        names = sample.boxes.labels(manifest.classes)
        checked = clip_boxes(sample.boxes.xyxy, names, width, height, tolerate=False)
        problems.extend((where, problem) for problem in checked.problems)
        digest.update(json.dumps(sample.to_json(manifest.classes), sort_keys=True).encode())
        digest.update(file_sha256(path).encode())
        mask_path = manifest.resolve_mask(sample)
        if mask_path is not None:
            mask = read_mask(mask_path)
            problem = mask if isinstance(mask, str) else mask_problem(mask, image.shape)
            if problem:
                problems.append((str(mask_path), problem))
            else:
                digest.update(file_sha256(mask_path).encode())
    if problems:
        bad_files = len({p for p, _ in problems})
        raise DatasetError(f"dataset {manifest.name!r} rejected: {bad_files} bad files", problems)
    return ValidationReport(digest.hexdigest(), len(manifest.samples), manifest.counts())
