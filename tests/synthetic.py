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
