"""Torch datasets over a manifest split: images decoded and resized once, kept in RAM.

Decoding once matters on a 2-core station PC: PNG decoding would otherwise cost as much as
the forward pass. Augmentation runs per sample on the cached uint8 pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.inference.preprocess import read_image, resize


def load_images(
    manifest: Manifest, samples: list[Sample], size: tuple[int, int], interpolation: str, progress=None
) -> np.ndarray:
    """Decode and resize samples to uint8 [N, height, width, 3] with the shared preprocessing."""
    out = np.empty((len(samples), *size, 3), dtype=np.uint8)
    for i, sample in enumerate(samples):
        out[i] = resize(read_image(manifest.resolve(sample)), size, interpolation)
        if progress:
            progress(1)
    return out


def targets_for(manifest: Manifest, samples: list[Sample], soft_label_key: str | None) -> np.ndarray:
    """Training targets: class indices, or defect probabilities (float) for soft labels."""
    if soft_label_key:
        return np.array(
            [float(s.meta.get(soft_label_key, float(manifest.is_defective(s)))) for s in samples],
            dtype=np.float32,
        )
    index = {c: i for i, c in enumerate(manifest.classes)}
    return np.array([index[s.label] for s in samples], dtype=np.int64)


class ImageDataset(Dataset):
    """Cached images with targets; `augment` is an albumentations pipeline or None."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, augment=None):
        self.images = images
        self.targets = targets
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.images[i]
        if self.augment is not None:
            image = self.augment(image=image)["image"]
        return torch.from_numpy(np.ascontiguousarray(image)), torch.as_tensor(self.targets[i])
