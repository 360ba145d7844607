"""MLflow: the embedded SQLite store by default, a real server through MLFLOW_TRACKING_URI.

Bundles are logged as run artifacts and registered as model versions. Versions move through
aliases (`challenger`, `champion`), never stages. Promotion to champion is gated: the
challenger must meet its absolute floors (AUROC or mAP@0.5, escape and false-reject rates:
the config's `gate:` section, carried in the bundle) even when there is no champion, and must
be no worse than the champion on the same test split, both evaluated afresh.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zerodefect.inference.registry import alias_version
from zerodefect.settings import Settings, get_settings
from zerodefect.training.report import Report

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


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

    from zerodefect.inference.signing import SIGNATURE_JSON, SignatureError, read_signature

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=f"bundle/{SIGNATURE_JSON}", dst_path=tmp
            )
            record = read_signature(Path(local).parent)
        except Exception as exc:  # MLflow raises several types for a missing artifact
            raise SignatureError(f"run {run_id}: its bundle has no valid {SIGNATURE_JSON}; sign it") from exc
    return {"signing_key_id": record["key_id"], "signature": record["signature"]}


@dataclass
class GateRow:
    """One metric of the gate: the challenger against its absolute floor and the champion."""

    metric: str
    challenger: float | None
    champion: float | None
    # The floor (a minimum when higher is better, else a maximum) from the bundle's `gate:`.
    floor: float | None
    higher_is_better: bool
    ok: bool
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "challenger": self.challenger,
            "champion": self.champion,
            "floor": self.floor,
            "ok": self.ok,
            "note": self.note,
        }


@dataclass
class GateResult:
    passed: bool
    challenger: str
    champion: str | None
    rows: list[GateRow] = field(default_factory=list)
    forced: bool = False
    promoted: bool = False
    split: str = "test"
    manifest: str = ""
    reason: str | None = None
    recorded: bool = False
    # `champion`, or a canary's `champion-<line or station>`.
    alias: str = CHAMPION

    @property
    def failures(self) -> list[GateRow]:
        return [row for row in self.rows if not row.ok]


def gate_floors(meta: Any) -> Any:
    """The floors a bundle was trained for (its config's `gate:`), or the defaults for bundles
    made before floors existed."""
    from zerodefect.training.config import GateConfig

    section = (meta.training or {}).get("config", {}).get("gate") or {}
    return GateConfig.model_validate(section)


def judge(
    challenger: Report,
    champion: Report | None,
    floors: Any,
    tolerance: float,
) -> tuple[bool, list[GateRow]]:
    """Gate rows: each metric must meet its absolute floor, and, when a champion exists, be no
    worse than the champion's by more than `tolerance` on the same split.

    An undefined headline metric or escape rate fails (the gate cannot see what it must check);
    an undefined false-reject rate (no clean parts in the split) is skipped and says so.
    """
    from zerodefect.training.tasks import get_task

    rows, passed = [], True
    for metric, higher_better in get_task(challenger.task).gate_metrics.items():
        new = challenger.metric(metric)
        old = champion.metric(metric) if champion else None
        floor = floors.floor(metric)
        note = ""
        if new is None:
            ok = metric == "false_reject_rate"
            note = "no clean parts in the split" if ok else "undefined on this split"
        else:
            ok = new >= floor if higher_better else new <= floor
            if not ok:
                note = f"{'under' if higher_better else 'over'} the floor"
            if old is not None:
                no_worse = new >= old - tolerance if higher_better else new <= old + tolerance
                if not no_worse:
                    note = "; ".join(filter(None, [note, "worse than the champion"]))
                ok = ok and no_worse
        passed &= ok
        rows.append(GateRow(metric, new, old, floor, higher_better, ok, note))
    return passed, rows


EVIDENCE_METRIC = "record_error_rate"


def evidence_rows(report: dict[str, Any], name: str, version: str, tolerance: float) -> list[GateRow]:
    """A re-score report of this version (`zerodefect rescore --out`) as a gate row: its error
    rate on the record's reviewed parts (reviewed escapes it still misses, confirmed defects it
    passes, parts reviewed good it rejects) against the line's on the same parts, which it must
    not exceed by more than `tolerance`. The champion column holds the line's rate: the verdicts
    the plant actually gave. A report of another model or version is refused."""
    model = report.get("model", {})
    if model.get("name") != name or str(model.get("version")) != str(version):
        raise ValueError(
            f"the re-score report is of {model.get('name')} v{model.get('version')}, not of {name} v{version}"
        )
    reviewed = report["escapes_reviewed"] + report["reviewed_good"] + report["confirmed_defects"]
    summary = (
        f"{report['parts']} archived parts re-scored, {reviewed} reviewed: {report['escapes_caught']} escapes "
        f"caught, {report['false_rejects_new']} new false rejects, {report['new_escapes']} new escapes "
        "(champion column: the line's verdicts)"
    )
    if reviewed == 0:
        return [GateRow(EVIDENCE_METRIC, None, None, None, False, False, "no reviewed part in the re-score")]
    new = report["reviewed_errors"]["bundle"] / reviewed
    line = report["reviewed_errors"]["line"] / reviewed
    ok = new <= line + tolerance
    note = summary if ok else f"worse than the line; {summary}"
    return [GateRow(EVIDENCE_METRIC, new, line, line + tolerance, False, ok, note)]


def promote(
    name: str,
    version: str | None = None,
    force: bool = False,
    tolerance: float = 0.005,
    manifest_path: Path | None = None,
    split: str = "test",
    settings: Settings | None = None,
    reason: str | None = None,
    evidence: Path | None = None,
    canary: str | None = None,
) -> GateResult:
    """Move `champion` to the challenger (or `version`) if the gate passes, or if forced.

    With `canary` (a line or station name), only `champion-<canary>` moves: the stations of
    that line or station serve the version first (see inference.registry.canary_aliases). A
    later promotion for all ends the canaries of that version.

    The gate holds the version to its absolute floors (the `gate:` section it was trained
    with), and, when a champion exists, to "no worse than the champion". Both models are
    evaluated through ONNX Runtime on the same split of the challenger's manifest (or
    `manifest_path`), so the comparison never mixes test sets. `force` needs a `reason`, which
    is kept on the version in MLflow and in the quality record's promotions. `evidence`, a
    re-score report of the version on the record's archived parts, adds its row
    (`evidence_rows`), judged and recorded like the others.
    """
    import mlflow

    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.bundle import read_meta
    from zerodefect.inference.source import fetch_bundle
    from zerodefect.training.evaluate import evaluate_bundle

    if force and not (reason and reason.strip()):
        raise ValueError("--force needs --reason: say why this version must serve despite the gate")
    from zerodefect.quality.models import PROMOTION_REASON_MAX

    if force and len(reason.strip()) > PROMOTION_REASON_MAX:
        # Checked before the alias moves: the record's audit copy of the reason must fit.
        raise ValueError(
            f"--reason takes at most {PROMOTION_REASON_MAX} characters, not {len(reason.strip())}"
        )
    report = None
    if evidence is not None:  # a bad file is refused before any evaluation
        from zerodefect.quality.rescore import read_report

        report = read_report(evidence)
    settings = settings or get_settings()
    client = mlflow.MlflowClient()
    candidate = client.get_model_version(name, version) if version else alias_version(name, CHALLENGER)
    if candidate is None:
        raise ValueError(f"model {name!r} has no {CHALLENGER!r} alias; give --version")
    champion = alias_version(name, CHAMPION)
    manifest_file = manifest_path or Path(candidate.tags.get("manifest", ""))
    manifest = Manifest.read(manifest_file)
    cache = settings.data_dir / "registry-cache"
    bundle = fetch_bundle(f"models:/{name}/{candidate.version}", cache)
    new_report = evaluate_bundle(bundle, manifest, split, timing_images=0)
    old_report = None
    if champion is not None and champion.version != candidate.version:
        old_report = evaluate_bundle(
            fetch_bundle(f"models:/{name}/{champion.version}", cache), manifest, split, timing_images=0
        )
    passed, rows = judge(new_report, old_report, gate_floors(read_meta(bundle)), tolerance)
    if report is not None:
        extra = evidence_rows(report, name, str(candidate.version), tolerance)
        rows += extra
        passed = passed and all(row.ok for row in extra)
    shadow = shadow_rows(name, str(candidate.version), tolerance, settings)
    passed, rows = passed and all(row.ok for row in shadow), rows + shadow
    result = GateResult(
        passed,
        str(candidate.version),
        str(champion.version) if champion else None,
        rows,
        forced=force and not passed,
        split=split,
        manifest=str(manifest_file),
        reason=reason.strip() if force and reason else None,
        alias=f"{CHAMPION}-{canary}" if canary else CHAMPION,
    )
    if passed or force:
        result.champion = move_alias(name, result.alias, str(candidate.version)) or result.champion
        if not canary:
            end_canaries(name, str(candidate.version))
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        gate = "passed" if passed else "FORCED"
        tags = {"promoted_at": stamp, "promotion_gate": gate, "promoted_by": _who()}
        tags.update({f"gate.{r.metric}": f"{r.challenger} vs {r.champion} (floor {r.floor})" for r in rows})
        if result.forced:
            tags.update({"forced_reason": result.reason, "forced_at": stamp})
            client.update_model_version(
                name,
                candidate.version,
                description=f"FORCED to @{CHAMPION} over a failed gate by {_who()} at {stamp}: {result.reason}",
            )
            log.warning(
                "FORCED promotion of %s v%s over a failed gate: %s", name, candidate.version, result.reason
            )
        for key, value in tags.items():
            client.set_model_version_tag(name, candidate.version, key, str(value)[:5000])
        result.promoted = True
        result.recorded = record_promotion(name, result, settings)
    return result


def _who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def record_promotion(name: str, result: GateResult, settings: Settings) -> bool:
    """Write the promotion into the quality record's audit trail (ZD_RECORD_URL)."""
    gate = "FORCED" if result.forced else "passed"
    rows = [row.as_dict() for row in result.rows]
    return _audit(name, result.challenger, result.alias, result.champion, gate, result.reason, rows, settings)


def move_alias(name: str, alias: str, version: str) -> str | None:
    """Point `alias` at `version`; returns the version it held before. That version is kept on
    the new one as the tag `previous.<alias>`: the step a rollback takes back."""
    import mlflow

    client = mlflow.MlflowClient()
    before = alias_version(name, alias)
    client.set_registered_model_alias(name, alias, version)
    previous = str(before.version) if before is not None else None
    if previous is not None and previous != version:
        client.set_model_version_tag(name, version, f"previous.{alias}", previous)
    return previous


def end_canaries(name: str, version: str) -> list[str]:
    """Remove the canary aliases (`champion-*`) that point at `version`, now that it serves
    everywhere; returns them. Canaries of other versions stay where they are."""
    import mlflow

    client = mlflow.MlflowClient()
    ended = [
        alias
        for alias, held in client.get_registered_model(name).aliases.items()
        if alias.startswith(f"{CHAMPION}-") and str(held) == version
    ]
    for alias in ended:
        client.delete_registered_model_alias(name, alias)
    return ended


@dataclass
class RollbackResult:
    alias: str
    from_version: str
    # The version the alias's stations serve now: the previous champion, or, when a canary
    # ends, @champion's version.
    to_version: str | None
    recorded: bool = False


def rollback(
    name: str, canary: str | None = None, reason: str | None = None, settings: Settings | None = None
) -> RollbackResult:
    """Move `champion` back to the version it held before the current one (its
    `previous.champion` tag, else the record's promotions), or, with `canary`, remove the canary
    alias so its stations follow `champion` again. No gate: the previous version already served.
    Stations following the alias swap at their next poll (model_poll_seconds)."""
    import mlflow

    settings = settings or get_settings()
    client = mlflow.MlflowClient()
    alias = f"{CHAMPION}-{canary}" if canary else CHAMPION
    current = alias_version(name, alias)
    if current is None:
        raise ValueError(f"model {name!r} has no {alias!r} alias to roll back")
    if canary:
        client.delete_registered_model_alias(name, alias)
        champion = alias_version(name, CHAMPION)
        target = str(champion.version) if champion is not None else None
    else:
        target = current.tags.get(f"previous.{CHAMPION}") or _previous_in_record(
            name, str(current.version), settings
        )
        if target is None:
            raise ValueError(f"{name} v{current.version} has no previous @{CHAMPION} to roll back to")
        # Not move_alias: the target keeps its own `previous.champion`, so rollbacks step back.
        client.set_registered_model_alias(name, CHAMPION, target)
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        client.set_model_version_tag(name, current.version, "rolled_back_at", stamp)
    log.warning("%s @%s rolled back from v%s to %s", name, alias, current.version, target or "(none)")
    result = RollbackResult(alias, str(current.version), target)
    result.recorded = _audit(
        name, target or "-", alias, result.from_version, "ROLLBACK", reason, [], settings
    )
    return result


def _previous_in_record(name: str, version: str, settings: Settings) -> str | None:
    """The version `champion` held before `version` was promoted, from the record's audit trail
    (promotions made before the registry kept `previous.champion`)."""
    from sqlalchemy import select

    from zerodefect.quality.db import record_session
    from zerodefect.quality.models import ModelPromotion

    with record_session(settings.record_database_url) as session:
        return session.scalar(
            select(ModelPromotion.previous_version)
            .where(
                ModelPromotion.model_name == name,
                ModelPromotion.model_version == version,
                ModelPromotion.alias == CHAMPION,
                ModelPromotion.gate != "ROLLBACK",
            )
            .order_by(ModelPromotion.id.desc())
            .limit(1)
        )


def _audit(
    name: str,
    version: str,
    alias: str,
    previous: str | None,
    gate: str,
    reason: str | None,
    rows: list[dict[str, Any]],
    settings: Settings,
) -> bool:
    """One row of the record's promotions audit trail; a record that cannot be reached is
    logged loudly, and the registry's move stands."""
    from zerodefect.quality.db import record_session
    from zerodefect.quality.promotions import add_promotion

    try:
        with record_session(settings.record_database_url) as session:
            add_promotion(session, name, version, alias, previous, gate, reason, _who(), rows)
    except Exception as exc:  # the registry's decision is made; the audit copy must not undo it
        log.error("%s of %s v%s not written to the quality record: %s", gate, name, version, exc)
        return False
    return True


def shadow_rows(name: str, version: str, tolerance: float, settings: Settings) -> list[GateRow]:
    """Gate rows from shadow mode, when the version ran as a shadow on the line: its escape and
    false-reject rates on reviewed parts, against the verdicts the line gave the same parts.
    No row without reviewed parts of that kind; a record that cannot be read is logged, and
    the gate decides on the test split alone."""
    from zerodefect.quality.db import record_session
    from zerodefect.quality.shadow import compare

    try:
        with record_session(settings.record_database_url) as session:
            report = compare(session, name, version)
    except Exception as exc:
        log.error("shadow evidence for %s v%s not read from the record: %s", name, version, exc)
        return []
    rows = []
    for metric, errors, line_errors, parts in (
        ("shadow_escape_rate", report.challenger_escapes, report.serving_escapes, report.reviewed_defective),
        (
            "shadow_false_reject_rate",
            report.challenger_false_rejects,
            report.serving_false_rejects,
            report.reviewed_good,
        ),
    ):
        if parts:
            new, old = errors / parts, line_errors / parts
            ok = new <= old + tolerance
            note = f"{parts} reviewed parts, {report.disagreements}/{report.parts} disagreements"
            rows.append(
                GateRow(
                    metric,
                    new,
                    old,
                    old + tolerance,
                    False,
                    ok,
                    note if ok else f"worse than the line; {note}",
                )
            )
    return rows
