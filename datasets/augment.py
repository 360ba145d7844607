"""Augmentations are albumentations pipelines declared in the training config.

A config lists transforms by their albumentations class name with keyword arguments, e.g.
`- {name: D4}` or `- {name: RandomBrightnessContrast, brightness_limit: 0.1, p: 0.5}`.
Detection pipelines carry the boxes through every transform (Pascal VOC pixel format).
"""

from __future__ import annotations

from typing import Any


class AugmentationError(ValueError):
    """An augmentation in the config that albumentations does not know or rejects."""


def build_augmentations(specs: list[dict[str, Any]], boxes: bool = False):
    """Build an `albumentations.Compose` from config entries; None when the list is empty.

    With `boxes` (a task whose truth is boxes), every transform moves the boxes too."""
    if not specs:
        return None
    import albumentations as A

    transforms = []
    for spec in specs:
        params = dict(spec)
        name = params.pop("name", None)
        cls = getattr(A, str(name), None) if name else None
        if cls is None or not isinstance(cls, type):
            raise AugmentationError(f"unknown albumentations transform {name!r}")
        try:
            transforms.append(cls(**params))
        except (TypeError, ValueError) as exc:
            raise AugmentationError(f"{name}: {exc}") from exc
    if boxes:
        bbox = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3)
        return A.Compose(transforms, bbox_params=bbox)
    return A.Compose(transforms)
