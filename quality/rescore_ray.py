"""The Ray engine of `zerodefect rescore`: Ray Data batches through ONNX Runtime actors.

The only module that imports Ray (the `[scale]` extra); the import-linter contracts in
pyproject.toml keep it that way. Each actor loads the bundle once and runs the same
`score_parts` as the local engine, so both engines give the same verdicts.

Locally, `ray.init(num_cpus=N)` starts a private cluster on 127.0.0.1; with an address
(`ray://head:10001`, or `auto`) the same code runs on a cluster. There the workers must read
the record's images at the same path (the image store mounted on every node) and reach the
MLflow server the bundle comes from (the source is pinned to `models:/NAME/VERSION`).

Actors take at most CPUs - 1: with every CPU held by actors Ray Data hung here (ray issue
#44687), as its own tasks had no CPU left.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from zerodefect.inference.imagecheck import MAX_PIXELS
from zerodefect.quality.rescore import ArchivedPart, Rescored, load_engine, score_parts


class ScoreActor:
    """A Ray Data callable class: one engine per actor, a batch of (id, path) in, verdicts out."""

    def __init__(self, source: str, threads: int, max_pixels: int):
        self.engine = load_engine(source, threads)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        parts = list(zip(batch["id"].tolist(), batch["path"].tolist(), strict=True))
        results = score_parts(self.engine, parts, self.max_pixels)
        return {
            "id": np.array([r.id for r in results], np.int64),
            "verdict": np.array([r.verdict or "" for r in results], object),
            "score": np.array([np.nan if r.score is None else r.score for r in results], np.float64),
            "defect_class": np.array([r.defect_class or "" for r in results], object),
            "error": np.array([r.error or "" for r in results], object),
        }


def start(address: str | None, num_cpus: int | None) -> float:
    """Connect to a cluster at `address`, or start a local one with `num_cpus`; the seconds it
    took. Usage statistics stay off (no network at run time); a local cluster has no dashboard."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    began = time.perf_counter()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    return time.perf_counter() - began


def cluster_cpus() -> int:
    """The CPUs of the cluster Ray is connected to."""
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


def actor_count(cpus: int, requested: int | None) -> int:
    """Actors to run on `cpus`: `requested`, or CPUs - 1; refused when no CPU would be left
    for Ray Data's own tasks (ray issue #44687)."""
    limit = cpus - 1
    if limit < 1:
        raise ValueError(
            f"the Ray cluster has {cpus} CPU(s): re-scoring needs 2 or more (actors <= CPUs - 1)"
        )
    if requested is None:
        return limit
    if not 1 <= requested <= limit:
        raise ValueError(
            f"--actors {requested}: the Ray cluster has {cpus} CPUs; use 1 to {limit} "
            "(one CPU stays free for Ray Data, see ray issue #44687)"
        )
    return requested


def rescore_ray(
    source: str,
    parts: Sequence[ArchivedPart],
    actors: int,
    batch_size: int = 64,
    threads: int = 1,
    max_pixels: int = MAX_PIXELS,
) -> list[Rescored]:
    """Score every part in `actors` Ray actors (Ray started by `start`), `batch_size` parts a
    batch; each actor holds one CPU and runs ONNX Runtime on `threads` threads."""
    import ray

    dataset = ray.data.from_items([{"id": p.id, "path": p.path} for p in parts])
    scored = dataset.map_batches(
        ScoreActor,
        fn_constructor_args=(source, threads, max_pixels),
        batch_size=batch_size,
        batch_format="numpy",
        concurrency=actors,
        num_cpus=1,
    )
    out = []
    for row in scored.iter_rows():
        score: Any = row["score"]
        out.append(
            Rescored(
                int(row["id"]),
                row["verdict"] or None,
                None if np.isnan(score) else float(score),
                row["defect_class"] or None,
                row["error"] or None,
            )
        )
    return out


def stop() -> None:
    """Disconnect (and stop a local cluster)."""
    import ray

    ray.shutdown()
