"""Where bundles come from: a folder, or the MLflow registry by `models:/NAME@ALIAS`."""

from __future__ import annotations

from pathlib import Path

from zerodefect.inference.bundle import BUNDLE_JSON, BundleError


def fetch_bundle(uri: str | Path, cache_dir: Path | None = None) -> Path:
    """Return a local bundle folder for a path or a `models:/NAME@ALIAS|VERSION` URI.

    Registry bundles are downloaded with the MLflow client (mlflow-skinny is enough); the
    sha256 check happens when the bundle is loaded, wherever it came from.
    """
    text = str(uri)
    if not text.startswith("models:/"):
        folder = Path(text)
        if not (folder / BUNDLE_JSON).is_file():
            raise BundleError(f"{folder}: not a model bundle ({BUNDLE_JSON} missing)")
        return folder
    import mlflow

    from zerodefect.settings import configure_mlflow

    configure_mlflow()
    dst = None
    if cache_dir is not None:
        dst = cache_dir / text.removeprefix("models:/").replace("@", "_at_").replace("/", "_")
        dst.mkdir(parents=True, exist_ok=True)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=text, dst_path=str(dst) if dst else None)
        )
    except Exception as exc:  # MLflow raises several types for unknown names and aliases
        raise BundleError(f"{text}: cannot fetch from the registry ({exc})") from exc
    if (local / BUNDLE_JSON).is_file():
        return local
    nested = sorted(p.parent for p in local.rglob(BUNDLE_JSON))
    if not nested:
        raise BundleError(f"{text}: the registered artifact holds no {BUNDLE_JSON}")
    return nested[0]
