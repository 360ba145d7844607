"""The bench's stand-in anomaly data: generated parts that the one training pipeline accepts,
of the camera's (non-square) shape, with masks exactly over the planted defects. The bench's
timings themselves are never asserted (docs/benchmarks.md holds them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from zerodefect.bench import write_standin_parts
from zerodefect.datasets.manifest import Manifest
from zerodefect.datasets.validate import validate
from zerodefect.inference.preprocess import read_image


def test_standin_parts_are_valid_anomaly_data_with_masks_on_their_defects(tmp_path: Path) -> None:
    splits = {"train": (3, 0), "val": (1, 1), "test": (1, 2)}
    manifest = Manifest.read(write_standin_parts(tmp_path, source=(150, 60), splits=splits))
    check = validate(manifest)  # masks binary and of their image's size, every file readable
    assert manifest.task == "anomaly" and check.images == 8
    for split, (good, defective) in splits.items():
        samples = manifest.split(split)
        assert [manifest.is_defective(s) for s in samples] == [False] * good + [True] * defective
    for sample in manifest.samples:
        image = read_image(manifest.resolve(sample))
        assert image.shape == (150, 60, 3)  # height x width as asked: not square
        if not manifest.is_defective(sample):
            assert sample.mask is None
            continue
        mask = read_image(manifest.resolve_mask(sample))[..., 0] > 0
        # The mask is the scratch and the spot: dark or bright against the part's grey texture.
        texture = np.median(image[~mask], axis=0)
        inside = np.abs(image[mask].astype(float) - texture).max(axis=1)
        assert mask.sum() > 50 and np.median(inside) > 60
        assert np.abs(image[~mask].astype(float) - texture).max(axis=1).mean() < 20
