"""Check a whole dataset before training starts, and fingerprint it.

Every image is opened once here, so a missing file, a corrupt image, an unknown label or a box
outside its image stops the run before the first epoch, with every offending file listed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from zerodefect.datasets.manifest import SPLITS, DatasetError, Manifest, file_sha256
from zerodefect.inference.preprocess import ImageDecodeError, read_image


@dataclass
class ValidationReport:
    dataset_hash: str
    images: int
    counts: dict[str, dict[str, int]]


def validate(manifest: Manifest, require_splits: bool = True) -> ValidationReport:
    """Validate every row and image; raise DatasetError listing all problems at once.

    The dataset hash covers the header, every row and every image's bytes, so a changed
    pixel, label, box or split gives a different hash.
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
        if manifest.task == "classification" and len(sample.labels) != 1:
            problems.append((where, f"needs exactly one label, has {sample.labels}"))
        try:
            image = read_image(path)
        except ImageDecodeError as exc:
            problems.append((where, "missing file" if not path.exists() else str(exc).split(": ")[-1]))
            continue
        height, width = image.shape[:2]
        for box in sample.boxes:
            if box.label not in known:
                problems.append((where, f"box has unknown label {box.label!r}"))
            if not (0 <= box.xmin < box.xmax <= width and 0 <= box.ymin < box.ymax <= height):
                problems.append(
                    (
                        where,
                        f"box {box.label} [{box.xmin}, {box.ymin}, {box.xmax}, {box.ymax}] "
                        f"is outside the {width}x{height} image or empty",
                    )
                )
        digest.update(json.dumps(sample.to_json(), sort_keys=True).encode())
        digest.update(file_sha256(path).encode())
    if problems:
        bad_files = len({p for p, _ in problems})
        raise DatasetError(f"dataset {manifest.name!r} rejected: {bad_files} bad files", problems)
    return ValidationReport(digest.hexdigest(), len(manifest.samples), manifest.counts())
