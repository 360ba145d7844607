"""The model a station serves, swappable while requests are in flight.

`ModelHolder.current` is replaced by one reference assignment: a batch that started on the
old model finishes on it, the next batch uses the new one, and every result carries the
version that judged it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from zerodefect.inference.engine import Engine
from zerodefect.inference.source import fetch_bundle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine
    name: str
    version: str
    uri: str


def resolve_and_load(uri: str, cache_dir: Path, threads: int | None) -> LoadedModel:
    """Load a bundle; for `models:/NAME@ALIAS`, pin the alias to its version first, so the
    version recorded is exactly the one downloaded even if the alias moves meanwhile."""
    if uri.startswith("models:/") and "@" in uri:
        import mlflow

        from zerodefect.settings import configure_mlflow

        configure_mlflow()
        name, alias = uri.removeprefix("models:/").split("@", 1)
        version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        folder = fetch_bundle(f"models:/{name}/{version}", cache_dir)
        engine = Engine.from_bundle(folder, threads)
        return LoadedModel(engine, name, version, uri)
    folder = fetch_bundle(uri, cache_dir)
    engine = Engine.from_bundle(folder, threads)
    return LoadedModel(engine, engine.meta.name, f"sha-{engine.meta.onnx_sha256[:12]}", uri)


class ModelHolder:
    def __init__(self, uri: str, cache_dir: Path, threads: int | None = None):
        self.uri = uri
        self.cache_dir = cache_dir
        self.threads = threads
        self._lock = threading.Lock()
        self.current = resolve_and_load(uri, cache_dir, threads)

    def alias_moved(self) -> bool:
        """True when this holder follows an alias that now points at another version."""
        if not (self.uri.startswith("models:/") and "@" in self.uri):
            return False
        import mlflow

        name, alias = self.uri.removeprefix("models:/").split("@", 1)
        version = str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)
        return version != self.current.version

    def reload(self) -> tuple[str, str]:
        """Load the URI again (an alias may have moved) and swap; returns (old, new) versions."""
        with self._lock:
            fresh = resolve_and_load(self.uri, self.cache_dir, self.threads)
            old, self.current = self.current, fresh
        log.info("model %s: version %s -> %s", self.uri, old.version, fresh.version)
        return old.version, fresh.version
