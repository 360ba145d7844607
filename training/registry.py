"""MLflow: the embedded SQLite store by default, a real server through MLFLOW_TRACKING_URI.

Bundles are logged as run artifacts and registered as model versions. Versions move through
aliases (`challenger`, `champion`), never stages. Promotion to champion is gated: the
challenger must be no worse than the champion on the same test split, both evaluated afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zerodefect.settings import Settings, get_settings

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
# Metrics the promotion gate compares; True when higher is better.
# Per task: metric -> higher is better. A detector's false-reject rate is undefined without
# clean parts (NEU-DET) and then skipped, like any metric either side lacks.
GATE_METRICS = {
    "classification": {"escape_rate": False, "false_reject_rate": False, "auroc": True},
    "detection": {"escape_rate": False, "false_reject_rate": False, "map50": True},
}


def experiment_id(name: str, settings: Settings | None = None) -> str:
    """Get or create an experiment; with the embedded store, artifacts live in the data dir."""
    import mlflow

    settings = settings or get_settings()
    client = mlflow.MlflowClient()
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = (settings.artifact_root / name).as_uri()
    return client.create_experiment(name, artifact_location=location)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def register_bundle(run_id: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register the run's `bundle/` artifact folder as a new version and point `alias` at it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="zerodefect inspection model bundles")
    source = f"{client.get_run(run_id).info.artifact_uri}/bundle"
    tags = {**tags, **signature_tags(run_id)}
    version = client.create_model_version(name, source=source, run_id=run_id, tags=tags)
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


def signature_tags(run_id: str) -> dict[str, str]:
    """The signer's key id and the signature of a run's `bundle/`, kept as tags of its model
    version (the signature file itself is inside the registered artifact). Registering an
    unsigned bundle is refused: no station would serve it."""
    import tempfile

    import mlflow

    from zerodefect.models.signing import SIGNATURE_JSON, SignatureError, read_signature

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"bundle/{SIGNATURE_JSON}", dst_path=tmp
            )
            record = read_signature(Path(local).parent)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise SignatureError(f"run {run_id}: its bundle has no valid {SIGNATURE_JSON}; sign it") from exc
    return {"signing_key_id": record["key_id"], "signature": record["signature"]}


def alias_version(name: str, alias: str) -> Any | None:
    """The model version behind an alias, or None when the alias is not set."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return mlflow.MlflowClient().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


@dataclass
class GateResult:
    passed: bool
    challenger: str
    champion: str | None
    rows: list[tuple[str, float, float | None, bool]] = field(default_factory=list)
    forced: bool = False
    promoted: bool = False
    split: str = "test"
    manifest: str = ""


def compare(
    challenger: dict[str, Any], champion: dict[str, Any] | None, tolerance: float
) -> tuple[bool, list]:
    """Gate rows (metric, challenger, champion, ok): not worse than the champion by > tolerance."""
    rows, passed = [], True
    for metric, higher_better in GATE_METRICS[challenger.get("task", "classification")].items():
        new = challenger.get(metric)
        old = champion.get(metric) if champion else None
        if old is None or new is None:
            ok = True
        elif higher_better:
            ok = new >= old - tolerance
        else:
            ok = new <= old + tolerance
        passed &= ok
        rows.append((metric, new, old, ok))
    return passed, rows


def promote(
    name: str,
    version: str | None = None,
    force: bool = False,
    tolerance: float = 0.005,
    manifest_path: Path | None = None,
    split: str = "test",
    settings: Settings | None = None,
) -> GateResult:
    """Move `champion` to the challenger (or `version`) if the gate passes, or if forced.

    Both models are evaluated through ONNX Runtime on the same split of the challenger's
    manifest (or `manifest_path`), so the comparison never mixes test sets.
    """
    import mlflow

    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.source import fetch_bundle
    from zerodefect.training.evaluate import evaluate_any

    settings = settings or get_settings()
    client = mlflow.MlflowClient()
    candidate = client.get_model_version(name, version) if version else alias_version(name, CHALLENGER)
    if candidate is None:
        raise ValueError(f"model {name!r} has no {CHALLENGER!r} alias; give --version")
    champion = alias_version(name, CHAMPION)
    manifest_file = manifest_path or Path(candidate.tags.get("manifest", ""))
    manifest = Manifest.read(manifest_file)
    cache = settings.data_dir / "registry-cache"
    new_report = evaluate_any(
        fetch_bundle(f"models:/{name}/{candidate.version}", cache), manifest, split, timing=False
    )
    old_report = None
    if champion is not None and champion.version != candidate.version:
        old_report = evaluate_any(
            fetch_bundle(f"models:/{name}/{champion.version}", cache), manifest, split, timing=False
        )
    passed, rows = compare(new_report, old_report, tolerance)
    result = GateResult(
        passed,
        str(candidate.version),
        str(champion.version) if champion else None,
        rows,
        forced=force and not passed,
        split=split,
        manifest=str(manifest_file),
    )
    if passed or force:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(name, candidate.version, "promoted_at", stamp)
        client.set_model_version_tag(
            name, candidate.version, "promotion_gate", "passed" if passed else "FORCED"
        )
        for metric, new, old, _ in rows:
            client.set_model_version_tag(name, candidate.version, f"gate.{metric}", f"{new} vs {old}")
        if result.forced:
            log.warning("FORCED promotion of %s v%s over a failed gate", name, candidate.version)
        result.promoted = True
    return result
