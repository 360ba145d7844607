"""Small generated data sets with known labels and boxes, so tests need no downloads."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def part_image(rng: np.random.Generator, size: int, defective: bool) -> tuple[np.ndarray, list[float] | None]:
    """A grey textured part; a defective one carries a dark scratch whose box is returned."""
    image = rng.normal(150, 12, (size, size)).clip(0, 255).astype(np.uint8)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    if not defective:
        return image, None
    x1, y1 = (int(v) for v in rng.integers(4, size // 2, 2))
    x2, y2 = x1 + int(rng.integers(size // 4, size // 2 - 2)), y1 + int(rng.integers(4, size // 3))
    cv2.line(image, (x1, y1), (x2, y2), 20, max(2, size // 20))
    pad = max(2, size // 20)
    box = [max(0, x1 - pad), max(0, y1 - pad), min(size, x2 + pad), min(size, y2 + pad)]
    return image, [float(v) for v in box]


def make_folder_dataset(root: Path, per_class: int = 24, size: int = 64, seed: int = 0) -> Path:
    """ROOT/good/*.png and ROOT/scratch/*.png."""
    rng = np.random.default_rng(seed)
    for label in ("good", "scratch"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, _ = part_image(rng, size, label == "scratch")
            cv2.imwrite(str(root / label / f"{label}_{i:03d}.png"), image)
    return root


def make_voc_dataset(root: Path, images: int = 40, size: int = 96, seed: int = 0) -> Path:
    """Pascal VOC: ROOT/images/*.png and ROOT/annotations/*.xml with known boxes.

    Two defect classes that a detector can tell apart by shape: a dark `scratch` line and a
    bright filled `spot`; every image has one or two defects, a few have none (clean parts).
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        image, scratch = part_image(rng, size, defective=i % 5 != 4)
        objects = [("scratch", scratch)] if scratch else []
        if i % 2 == 0 and scratch:
            r = int(rng.integers(size // 12, size // 7))
            cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
            cv2.circle(image, (cx, cy), r, 250, -1)
            objects.append(("spot", [float(cx - r), float(cy - r), float(cx + r + 1), float(cy + r + 1)]))
        name = f"part_{i:03d}"
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        xml = "".join(
            f"<object><name>{label}</name><bndbox><xmin>{b[0] + 1:.0f}</xmin><ymin>{b[1] + 1:.0f}</ymin>"
            f"<xmax>{b[2]:.0f}</xmax><ymax>{b[3]:.0f}</ymax></bndbox></object>"
            for label, b in objects
        )
        (root / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>1</depth></size>{xml}</annotation>"
        )
    return root


def spot_arrays(count: int, size: int, seed: int = 0):
    """In-memory detection data for training-loop tests: grey textured parts, each with one bright
    spot, as uint8 [N, size, size, 3] images and their boxes (class 0, "spot")."""
    from zerodefect.inference.result import Detections

    rng = np.random.default_rng(seed)
    images, truths = [], []
    for _ in range(count):
        image, _ = part_image(rng, size, defective=False)
        r = int(rng.integers(size // 12, size // 7))
        cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
        cv2.circle(image, (cx, cy), r, 250, -1)
        images.append(np.repeat(image[..., None], 3, axis=2))
        box = np.array([[cx - r, cy - r, cx + r + 1, cy + r + 1]], np.float32)
        truths.append(Detections(box, np.ones(1, np.float32), np.zeros(1, np.int64)))
    return np.stack(images), truths


def make_large_voc_dataset(
    root: Path, images: int = 24, size: int = 128, seed: int = 0
) -> tuple[Path, dict[str, list[list[float]]]]:
    """Pascal VOC of frames with small defects, for tiling: bright spots 11-17 px across, which a
    whole frame at half its side as input shrinks under the detector's 8 px stride, and tiles of
    half the frame keep whole. ROOT/images/*.png and
    ROOT/annotations/*.xml; every image has three or four spots, and image 0's first one sits on
    the vertical middle line (a seam between tiles of half the frame). Returns the root and each
    image's true boxes."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    boxes: dict[str, list[list[float]]] = {}
    for i in range(images):
        image = rng.normal(150, 12, (size, size)).clip(0, 255).astype(np.uint8)
        image = cv2.GaussianBlur(image, (3, 3), 0)
        found = []
        for k in range(3 + i % 2):
            r = int(rng.integers(5, 8))
            cx, cy = (int(v) for v in rng.integers(r + 2, size - r - 2, 2))
            if i == 0 and k == 0:
                cx, cy = size // 2, size // 3
            cv2.circle(image, (cx, cy), r, 250, -1)
            found.append([float(cx - r), float(cy - r), float(cx + r + 1), float(cy + r + 1)])
        name = f"frame_{i:03d}"
        boxes[name] = found
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        xml = "".join(
            f"<object><name>spot</name><bndbox><xmin>{b[0] + 1:.0f}</xmin><ymin>{b[1] + 1:.0f}</ymin>"
            f"<xmax>{b[2]:.0f}</xmax><ymax>{b[3]:.0f}</ymax></bndbox></object>"
            for b in found
        )
        (root / "annotations" / f"{name}.xml").write_text(
            f"<annotation><filename>{name}.png</filename><size><width>{size}</width>"
            f"<height>{size}</height><depth>1</depth></size>{xml}</annotation>"
        )
    return root, boxes
