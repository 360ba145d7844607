"""Where bundles come from: a folder, or the MLflow registry by `models:/NAME@ALIAS`."""

from __future__ import annotations

from pathlib import Path

from zerodefect.inference.bundle import BUNDLE_JSON, BundleError
from zerodefect.inference.registry import download_bundle


def fetch_bundle(uri: str | Path, cache_dir: Path | None = None) -> Path:
    """Return a local bundle folder for a path or a `models:/NAME@ALIAS|VERSION` URI.

    Registry bundles are downloaded by zerodefect.inference.registry; the sha256 check happens
    when the bundle is loaded, wherever it came from.
    """
    text = str(uri)
    if not text.startswith("models:/"):
        folder = Path(text)
        if not (folder / BUNDLE_JSON).is_file():
            raise BundleError(f"{folder}: not a model bundle ({BUNDLE_JSON} missing)")
        return folder
    return download_bundle(text, cache_dir)
