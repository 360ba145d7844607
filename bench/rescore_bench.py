"""Re-scoring bench: one archived record re-scored by `zerodefect rescore` with the local engine
and with Ray (a local Ray, CPUs - 1 actors), in one run, as a user runs the command.

The record is generated in a temporary data dir (tests/archive.py: parts of two stations with
64x64 PNGs, the line's verdicts and reviews) and removed at the end; the bundle is the tests'
random-init Lite0 (tests/bundles.py) at `--size` px. Throughput is of the scoring (loading
the bundle included); Ray's start-up is reported apart.

Run from the repository root:
    .venv/bin/python -m bench.rescore_bench --parts 5000 --out docs/results/rescore-bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from datetime import timedelta
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", type=int, default=5000)
    parser.add_argument("--size", type=int, default=64, help="The bundle's input size (px).")
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rescore-bench-"))
    os.environ["ZD_DATA_DIR"] = str(tmp / "var")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'var' / 'mlflow.db'}"
    try:
        print(json.dumps(run(tmp, args.parts, args.size, args.num_cpus, args.out), indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(tmp: Path, count: int, size: int, num_cpus: int, out: Path | None) -> dict:
    from typer.testing import CliRunner

    from tests.archive import T0, archive
    from tests.bundles import make_bundle
    from zerodefect.cli import app
    from zerodefect.quality.db import record_session
    from zerodefect.quality.images import ImageStore
    from zerodefect.settings import get_settings

    get_settings.cache_clear()
    bundle = make_bundle(tmp / "bundle", 0.5, size=size)
    began = time.perf_counter()
    with record_session() as session:
        archive(session, ImageStore(get_settings().image_dir), count)
    build = time.perf_counter() - began
    window = ["--since", T0.isoformat(), "--until", (T0 + timedelta(minutes=count)).isoformat()]
    reports = {}
    # The local engine at its default ONNX Runtime threads (2-4) and at 1, as each Ray actor runs.
    runs = {
        "local": ["--engine", "local"],
        "local_1_thread": ["--engine", "local", "--threads", "1"],
        "ray": ["--engine", "ray", "--num-cpus", str(num_cpus)],
    }
    for name, extra in runs.items():
        path = tmp / f"{name}.json"
        result = CliRunner().invoke(
            app, ["rescore", "--model", str(bundle), *window, *extra, "--out", str(path)]
        )
        if result.exit_code != 0:
            raise SystemExit(f"rescore {' '.join(extra)} failed:\n{result.output}")
        reports[name] = json.loads(path.read_text())
    local, ray = reports["local"], reports["ray"]
    keys = ("parts", "ids", "by_station", "by_class", "reviewed_errors")
    same = all(local[k] == other[k] for other in reports.values() for k in keys)
    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "parts": local["parts"],
        "bundle_input_px": size,
        "record_build_seconds": round(build, 1),
        "local_parts_per_s": local["parts_per_s"],
        "local_seconds": local["seconds"],
        "local_1_thread_parts_per_s": reports["local_1_thread"]["parts_per_s"],
        "ray_parts_per_s": ray["parts_per_s"],
        "ray_seconds": ray["seconds"],
        "ray_init_seconds": ray["engine"]["init_seconds"],
        "ray_num_cpus": num_cpus,
        "ray_actors": ray["engine"]["actors"],
        "ray_batch_size": ray["engine"]["batch_size"],
        "same_verdicts": same,
        "disagreements": local["disagree"],
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


if __name__ == "__main__":
    main()
