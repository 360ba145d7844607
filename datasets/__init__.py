"""Datasets: the manifest format, importers, splits, validation and augmentation."""

from zerodefect.datasets.manifest import Box, DatasetError, Manifest, Sample

__all__ = ["Box", "DatasetError", "Manifest", "Sample"]
