"""Deterministic, stratified train/val/test splits.

Within each stratum, images are ordered by a seeded hash of their path, so a split depends only
on the seed and the data, never on file-system order or the platform's random generator, and
adding images to one stratum never moves images of another.
"""

from __future__ import annotations

import csv
import hashlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from zerodefect.datasets.manifest import SPLITS, DatasetError, Manifest, Sample


def stratum_key(sample: Sample, meta_keys: Sequence[str] = ()) -> tuple:
    """Labels plus the chosen metadata fields (e.g. ELPV's probability and cell type)."""
    parts: list = [tuple(sorted(set(sample.labels)))]
    for key in meta_keys:
        value = sample.meta.get(key)
        parts.append(round(value, 3) if isinstance(value, float) else value)
    return tuple(parts)


def assign_splits(
    manifest: Manifest,
    test: float = 0.2,
    val: float = 0.1,
    seed: int = 0,
    stratify_on: Sequence[str] = (),
    keep_existing: bool = False,
) -> Manifest:
    """Give every sample a split, stratified on labels and `stratify_on` metadata keys.

    Per stratum of n images: the first round(n*test) go to test, the next round(n*val) to val,
    the rest to train. With keep_existing, samples that already have a split keep it.
    """
    if not 0 <= test < 1 or not 0 <= val < 1 or test + val >= 1:
        raise ValueError(f"bad split fractions test={test} val={val}")
    strata: dict[tuple, list[Sample]] = defaultdict(list)
    for sample in manifest.samples:
        if keep_existing and sample.split:
            continue
        strata[stratum_key(sample, stratify_on)].append(sample)
    for members in strata.values():
        members.sort(key=lambda s: (hashlib.sha256(f"{seed}:{s.path}".encode()).hexdigest(), s.path))
        n_test = round(len(members) * test)
        n_val = round(len(members) * val)
        for i, sample in enumerate(members):
            sample.split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return manifest


def apply_split_file(manifest: Manifest, path: str | Path) -> Manifest:
    """Give every sample the split a CSV file names (columns `split` and `image`, the image's
    path as the manifest lists it; lines starting with # are comments): a published or
    committed split, so that two models, or two teams, are measured on the very same parts.

    Every sample must be listed, and every listed image must be in the manifest: a split that
    silently dropped or invented parts would make the comparison it exists for meaningless."""
    path = Path(path)
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read the split file ({exc.strerror})") from None
    rows = list(csv.DictReader(lines))
    if not rows or not {"split", "image"} <= set(rows[0]):
        raise DatasetError(f"{path}: a split file needs the columns split,image")
    wanted: dict[str, str] = {}
    for number, row in enumerate(rows, start=2):
        if row["split"] not in SPLITS:
            raise DatasetError(f"{path}:{number}: split {row['split']!r} is not one of {', '.join(SPLITS)}")
        wanted[row["image"]] = row["split"]
    listed = {s.path for s in manifest.samples}
    unknown = sorted(set(wanted) - listed)
    missing = sorted(listed - set(wanted))
    if unknown or missing:
        raise DatasetError(
            f"{path}: the split file and the manifest list different images: "
            f"{len(missing)} not in the file (e.g. {missing[:3]}), {len(unknown)} not in the manifest "
            f"(e.g. {unknown[:3]})"
        )
    for sample in manifest.samples:
        sample.split = wanted[sample.path]
    return manifest
