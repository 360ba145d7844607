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
        x1, y1, x2, y2 = sample.boxes.xyxy.T
        outside = ~((x1 >= 0) & (x1 < x2) & (x2 <= width) & (y1 >= 0) & (y1 < y2) & (y2 <= height))
        for i in np.flatnonzero(outside):
            label, box = manifest.classes[sample.boxes.class_id[i]], ", ".join(map(str, sample.boxes.xyxy[i]))
            problems.append((where, f"box {label} [{box}] is outside the {width}x{height} image or empty"))
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
