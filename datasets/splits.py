"""Deterministic, stratified train/val/test splits.

Within each stratum, images are ordered by a seeded hash of their path, so a split depends only
on the seed and the data, never on file-system order or the platform's random generator, and
adding images to one stratum never moves images of another.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from zerodefect.datasets.manifest import Manifest, Sample


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
