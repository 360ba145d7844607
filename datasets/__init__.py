"""Datasets: the manifest format, importers, splits, validation and augmentation."""

from zerodefect.datasets.manifest import DatasetError, Manifest, Sample

__all__ = ["DatasetError", "Manifest", "Sample"]
