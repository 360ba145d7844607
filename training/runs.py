"""Run folders: where a training run keeps its manifest, config, checkpoints and summary.

A run folder is enough to redo its bundle (`zerodefect export`) or continue it (`--resume`).
"""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime
from pathlib import Path

import yaml

from zerodefect.datasets.importers import IMPORTERS
from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.datasets.splits import split_dataset
from zerodefect.settings import Settings
from zerodefect.training.config import Config

log = logging.getLogger(__name__)


def prepare_manifest(cfg: Config, extra_data: Path | None = None) -> Manifest:
    """Read the config's manifest, importing and splitting it first if it does not exist."""
    path = cfg.data.manifest
    if not path.exists():
        if cfg.data.source is None:
            raise DatasetError(f"{path}: manifest not found and the config has no data.source to import")
        source = cfg.data.source
        manifest = IMPORTERS[source.format](**source.args)
        split = source.split
        given = split.model_fields_set  # a share set in the config that cannot apply is an error
        notes = split_dataset(
            manifest,
            split.test if "test" in given else None,
            split.val if "val" in given else None,
            split.seed if "seed" in given else None,
            split.stratify_on,
            keep_existing=True,
            split_file=split.file,
            option="data.source.split.",
        )
        manifest.write(path)
        log.info("imported %s: %d images -> %s", source.format, len(manifest.samples), path)
        for note in manifest.notes + notes:
            log.info("import: %s", note)
    manifest = Manifest.read(path)
    if extra_data is not None:
        manifest = manifest.merged(Manifest.read(extra_data))
    return manifest


def new_run_dir(settings: Settings, name: str, resume: bool | Path) -> Path:
    """A fresh run folder, or with resume the given one / the newest unfinished one."""
    base = settings.data_dir / "runs" / name
    if isinstance(resume, Path):
        return resume
    if resume:
        unfinished = sorted(
            p for p in base.glob("*") if (p / "last.pt").exists() and not (p / "summary.json").exists()
        )
        if unfinished:
            return unfinished[-1]
        log.warning("nothing to resume under %s; starting a new run", base)
    run_dir = base / datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def keep_inputs(run_dir: Path, cfg: Config, manifest: Manifest) -> None:
    """The run folder keeps what it was trained from, so `zerodefect export` can redo its bundle."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    manifest.write(run_dir / "manifest.jsonl")


def run_id_of(run_dir: Path) -> str | None:
    """The MLflow run id a run folder was logged to, if any."""
    path = run_dir / "mlflow_run_id"
    return path.read_text().strip() if path.exists() else None


def mark_finished(
    run_dir: Path, run_id: str, bundle_dir: Path, report_path: Path, version: str | None
) -> None:
    """summary.json: the run is finished (resume skips it; bench and demo look for it)."""
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "run_id": run_id,
                "bundle": str(bundle_dir),
                "report": str(report_path),
                "version": version,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
            indent=2,
        )
    )
