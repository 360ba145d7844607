"""The model a station serves, swappable while requests are in flight.

`ModelHolder.current` is replaced by one reference assignment: a batch that started on the
old model finishes on it, the next batch uses the new one, and every result carries the
version that judged it. Every load checks the bundle's signature against the station's trusted
keys: a refused version never replaces the one serving.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from zerodefect.inference.engine import Engine
from zerodefect.inference.registry import resolve_alias
from zerodefect.inference.source import fetch_bundle

log = logging.getLogger(__name__)

# One download-and-verify at a time in a process: two stations sharing a data dir (two lines
# on one box, the tests) follow the same promotion into the same cache folder, and one must
# never verify a bundle while the other rewrites it (seen as a "tampered" refusal).
_DOWNLOADS = threading.Lock()


@dataclass(frozen=True)
class LoadedModel:
    engine: Engine
    name: str
    version: str
    uri: str


def resolve_and_load(
    uri: str,
    cache_dir: Path,
    threads: int | None,
    trusted_keys: Sequence[Ed25519PublicKey],
    scopes: Sequence[str] = (),
) -> LoadedModel:
    """Load a bundle signed by one of `trusted_keys`; for `models:/NAME@ALIAS`, pin the alias to
    its version first, so the version recorded is exactly the one downloaded even if the alias
    moves meanwhile; `scopes` (station, line) let a canary alias ALIAS-<scope> win. Raises
    BundleError (SignatureError) for a bundle the station must refuse."""
    pinned = resolve_alias(uri, scopes)
    with _DOWNLOADS:
        if pinned is not None:
            name, version = pinned
            folder = fetch_bundle(f"models:/{name}/{version}", cache_dir)
            engine = Engine.from_bundle(folder, threads, trusted_keys)
            return LoadedModel(engine, name, version, uri)
        folder = fetch_bundle(uri, cache_dir)
        engine = Engine.from_bundle(folder, threads, trusted_keys)
    return LoadedModel(engine, engine.meta.name, f"sha-{engine.meta.onnx_sha256[:12]}", uri)


class ModelHolder:
    def __init__(
        self,
        uri: str,
        cache_dir: Path,
        threads: int | None = None,
        *,
        trusted_keys: Sequence[Ed25519PublicKey],
        scopes: Sequence[str] = (),
    ):
        self.uri = uri
        self.scopes = tuple(scopes)
        self.cache_dir = cache_dir
        self.threads = threads
        self.trusted_keys = list(trusted_keys)
        self._lock = threading.Lock()
        self._failed: str | None = None
        self.current = self._load()

    def _load(self) -> LoadedModel:
        return resolve_and_load(self.uri, self.cache_dir, self.threads, self.trusted_keys, self.scopes)

    def follow(self) -> str | None:
        """Swap to the version the alias points at if it moved; returns the new version.

        A version that failed to load is not tried again until the alias moves once more, so a
        broken promotion costs one attempt, not one per poll.
        """
        with self._lock:
            pinned = resolve_alias(self.uri, self.scopes)
            if pinned is None or pinned[1] in (self.current.version, self._failed):
                return None
            try:
                fresh = self._load()
            except Exception as exc:
                self._failed = pinned[1]
                log.error(
                    "model %s: version %s refused (not retried until the alias moves), still serving version %s: %s",
                    self.uri,
                    pinned[1],
                    self.current.version,
                    exc,
                )
                raise
            self.current = fresh
        log.info("model %s: following the alias to version %s", self.uri, fresh.version)
        return fresh.version

    def reload(self) -> tuple[str, str]:
        """Load the URI again (an alias may have moved) and swap; returns (old, new) versions.
        A bundle that fails to load (BundleError) leaves the current model serving."""
        with self._lock:
            try:
                fresh = self._load()
            except Exception as exc:
                log.error(
                    "model %s: reload refused, still serving version %s: %s",
                    self.uri,
                    self.current.version,
                    exc,
                )
                raise
            old, self.current = self.current, fresh
        log.info("model %s: version %s -> %s", self.uri, old.version, fresh.version)
        return old.version, fresh.version
