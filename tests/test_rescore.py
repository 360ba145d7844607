"""`zerodefect rescore`: a record's archived parts re-scored with a bundle, locally and on Ray.

The record is real (SQLite through the store, images in its content-addressed store, reviews
through add_review: tests/archive.py), the bundles are real signed ONNX bundles, and the
command is run as a user runs it. Each expected count is derived from the archive's plan.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.inference.bundle import update_meta
from zerodefect.quality.db import record_session
from zerodefect.quality.images import ImageStore
from zerodefect.quality.rescore import archived_parts, rescore_local
from zerodefect.quality.rescore_ray import actor_count
from zerodefect.settings import get_settings

from .archive import STATIONS, T0, Archived, archive
from .bundles import SIGNING_KEY, register

COUNT = 36
WINDOW = ["--since", T0.isoformat(), "--until", (T0 + timedelta(minutes=COUNT)).isoformat()]


@pytest.fixture(scope="module")
def archived(module_store: Path) -> dict:
    """COUNT parts in the window, and around them what re-scoring must leave out or survive:
    a part before the window, a fail-safe reject, a pass without a stored image, and a part
    whose stored image was damaged on disk."""
    import base64

    import cv2

    from zerodefect.inference.wire import InspectionIn
    from zerodefect.quality.models import Inspection, Station
    from zerodefect.quality.store import record_inspection

    settings = get_settings()
    images = ImageStore(settings.image_dir)
    with record_session() as session:
        parts = archive(session, images, COUNT)
        station = session.query(Station).filter_by(name=STATIONS[0][0]).one()
        common = {"model_name": "line-model", "model_version": "1", "threshold": 0.5}
        extra = [
            ("before", T0 - timedelta(hours=1), "pass", False),
            ("failsafe", T0 + timedelta(seconds=30), "reject", True),
            ("no-image", T0 + timedelta(seconds=40), "pass", False),
        ]
        png = base64.b64encode(cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))[1].tobytes()).decode()
        for name, when, verdict, failsafe in extra:
            image = {"image_b64": png, "image_type": "image/png"} if name != "no-image" else {}
            data = InspectionIn(
                key=f"extra-{name}",
                serial=name,
                captured_at=when,
                verdict=verdict,
                failsafe=failsafe,
                **common,
                **image,
            )
            record_inspection(session, station, data, images)
        damaged = session.get(Inspection, parts[-1].id)
        (images.root / damaged.image_path).write_bytes(b"\x89PNG\r\n\x1a\n not a png any more")
    scored = parts[:-1]
    return {"parts": parts, "scored": scored, "damaged": parts[-1]}


def _count(parts: list[Archived], verdict: str | None = None, review: str | None = None) -> int:
    return sum(
        (verdict is None or p.verdict == verdict) and (review is None or p.review == review) for p in parts
    )


def _rescore(args: list[str], out: Path) -> tuple[str, dict]:
    result = CliRunner().invoke(app, ["rescore", *args, *WINDOW, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return result.output, json.loads(out.read_text())


def test_a_reject_all_bundle_catches_every_escape_and_rejects_every_good_part(
    archived: dict, bundles: dict[str, Path], tmp_path: Path
) -> None:
    scored: list[Archived] = archived["scored"]
    output, report = _rescore(["--model", str(bundles["reject"])], tmp_path / "report.json")
    assert report["parts"] == len(scored) == COUNT - 1
    # Left out with their reasons: the fail-safe part, the part without an image, the damaged image.
    assert report["unscored"]["fail-safe verdict (no model judged it)"] == 1
    assert report["unscored"]["no stored image"] == 1
    assert [r for r in report["unscored"] if r.startswith("stored image refused")], report["unscored"]
    passes = _count(scored, "pass")
    assert report["newly_rejected"] == report["disagree"] == passes and report["newly_passed"] == 0
    assert report["agree"] == _count(scored, "reject")
    escapes = [p.id for p in scored if p.review == "escape"]
    assert report["escapes_reviewed"] == report["escapes_caught"] == len(escapes) > 0
    assert report["ids"]["escapes_caught"] == escapes and report["escapes_still_missed"] == 0
    assert report["false_rejects_new"] == _count(scored, review="good") > 0
    assert report["false_rejects_kept"] == _count(scored, review="false_reject") > 0
    assert report["new_escapes"] == report["false_rejects_fixed"] == 0
    for name, _ in STATIONS:
        mine = [p for p in scored if p.station == name]
        assert report["by_station"][name]["parts"] == len(mine)
        assert report["by_station"][name]["newly_rejected"] == _count(mine, "pass")
    # By class: a reviewer's class first (the escapes' scratch), then the line's (its rejects'
    # crack), then the bundle's (crack, for the other passes it now rejects).
    assert report["by_class"]["scratch"] == {
        "parts": len(escapes),
        "disagree": len(escapes),
        "newly_rejected": len(escapes),
        "newly_passed": 0,
    }
    assert report["by_class"]["crack"]["parts"] == len(scored) - len(escapes)
    assert report["by_class"]["crack"]["newly_rejected"] == passes - len(escapes)
    assert report["reviewed_errors"] == {
        "bundle": _count(scored, review="good") + _count(scored, review="false_reject"),
        "line": len(escapes) + _count(scored, review="false_reject"),
    }
    assert "reviewed escapes caught" in output and "by station" in output and "l2-st1" in output


def test_a_registry_alias_is_pinned_and_a_pass_all_bundle_lets_defects_through(
    archived: dict, bundles: dict[str, Path], tmp_path: Path
) -> None:
    scored: list[Archived] = archived["scored"]
    version = register(bundles["pass"], "rescore-pass", "challenger")
    _, report = _rescore(["--model", "models:/rescore-pass@challenger"], tmp_path / "report.json")
    assert report["model"]["name"] == "rescore-pass" and report["model"]["version"] == version
    assert report["newly_passed"] == _count(scored, "reject") and report["newly_rejected"] == 0
    assert report["escapes_caught"] == 0 and report["escapes_still_missed"] == _count(scored, review="escape")
    assert report["new_escapes"] == _count(scored, review="confirmed") > 0
    assert report["false_rejects_fixed"] == _count(scored, review="false_reject")
    assert report["false_rejects_new"] == report["false_rejects_kept"] == 0


def test_bad_input_is_a_message_not_a_traceback(archived: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["rescore", "--model", str(tmp_path), *WINDOW])
    assert result.exit_code == 2 and "not a model bundle" in result.output
    result = runner.invoke(app, ["rescore", "--model", str(tmp_path), "--since", "yesterday"])
    assert result.exit_code == 2 and "--since 'yesterday'" in result.output
    result = runner.invoke(
        app, ["rescore", "--model", str(tmp_path), "--since", "2026-11-21", "--until", "2026-11-20"]
    )
    assert result.exit_code == 2 and "before --until" in result.output
    result = runner.invoke(app, ["rescore", "--model", "models:/no-such-model@challenger", *WINDOW])
    assert result.exit_code == 2 and "no-such-model" in result.output
    later = ["--since", "2030-01-01", "--until", "2030-01-02"]
    result = runner.invoke(app, ["rescore", "--model", str(tmp_path), *later])
    assert result.exit_code == 2 and "no archived part" in result.output


def test_ray_actors_keep_a_cpu_free() -> None:
    assert actor_count(2, None) == 1 and actor_count(8, 3) == 3
    for cpus, requested in ((2, 2), (1, None), (4, 0)):
        with pytest.raises(ValueError, match="44687|2 or more"):
            actor_count(cpus, requested)


# Ray Data's own context warns about its deprecated settings whenever it is read.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_ray_engine_gives_the_local_engines_verdicts(
    archived: dict, bundles: dict[str, Path], tmp_path: Path
) -> None:
    """A bundle whose threshold splits the archive, so verdicts vary part by part; the Ray
    run (a local Ray of 2 CPUs, 1 actor) must give every part the local verdict."""
    folder = tmp_path / "split"
    shutil.copytree(bundles["pass"], folder)
    settings = get_settings()
    with record_session() as session:
        parts, _ = archived_parts(session, ImageStore(settings.image_dir), T0, T0 + timedelta(minutes=COUNT))
    local, _ = rescore_local(str(folder), parts)
    scores = [r.score for r in local if r.score is not None]
    update_meta(folder, SIGNING_KEY, threshold=float(np.median(scores)))
    _, here = _rescore(["--model", str(folder)], tmp_path / "local.json")
    assert here["newly_rejected"] > 0 and here["newly_passed"] > 0  # the verdicts do vary
    _, ray = _rescore(["--model", str(folder), "--engine", "ray", "--num-cpus", "2"], tmp_path / "ray.json")
    assert ray["engine"]["actors"] == 1 and ray["engine"]["init_seconds"] > 0
    for key in ("parts", "unscored", "ids", "by_station", "by_class", "reviewed_errors"):
        assert ray[key] == here[key], key
    result = CliRunner().invoke(
        app,
        ["rescore", "--model", str(folder), "--engine", "ray", "--num-cpus", "2", "--actors", "2", *WINDOW],
    )
    assert result.exit_code == 2 and "44687" in result.output


def _manifest(folder_dataset: Path, out: Path) -> Path:
    """A test split of the generated parts under the test bundles' classes (good, crack)."""
    from zerodefect.datasets.manifest import Manifest, Sample

    samples = [
        Sample(str(path), ["good" if label == "good" else "crack"], "test")
        for label in ("good", "scratch")
        for path in sorted((folder_dataset / label).glob("*.png"))[:4]
    ]
    return Manifest("classification", ["good", "crack"], samples, Path("/"), "good").write(out)


def test_the_promotion_gate_takes_a_rescore_report_as_evidence(
    archived: dict, bundles: dict[str, Path], folder_dataset: Path, tmp_path: Path
) -> None:
    """The reject-all bundle on one reviewed-good part is worse than the line there; on one
    reviewed escape it is better. The gate judges the report's row, refuses another version's
    report, and a promotion keeps the row in the record's audit trail."""
    from zerodefect.training.registry import EVIDENCE_METRIC, evidence_rows, promote

    name = "rescore-gate"
    version = register(bundles["reject"], name, "challenger")
    good = [
        "--since",
        (T0 + timedelta(minutes=1)).isoformat(),
        "--until",
        (T0 + timedelta(minutes=2)).isoformat(),
    ]
    escape = [
        "--since",
        (T0 + timedelta(minutes=2)).isoformat(),
        "--until",
        (T0 + timedelta(minutes=3)).isoformat(),
    ]
    reports = {}
    for label, window in (("good", good), ("escape", escape)):
        out = tmp_path / f"{label}.json"
        model = f"models:/{name}@challenger"
        result = CliRunner().invoke(app, ["rescore", "--model", model, *window, "--out", str(out)])
        assert result.exit_code == 0, result.output
        reports[label] = out
    (worse,) = evidence_rows(json.loads(reports["good"].read_text()), name, version, 0.005)
    assert (worse.challenger, worse.champion, worse.ok) == (1.0, 0.0, False)
    assert "worse than the line" in worse.note and "1 new false rejects" in worse.note
    (better,) = evidence_rows(json.loads(reports["escape"].read_text()), name, version, 0.005)
    assert (better.challenger, better.champion, better.ok) == (0.0, 1.0, True)
    assert "1 escapes caught" in better.note
    with pytest.raises(ValueError, match="not of rescore-gate v99"):
        evidence_rows(json.loads(reports["escape"].read_text()), name, "99", 0.005)

    manifest = _manifest(folder_dataset, tmp_path / "manifest.jsonl")
    gate = promote(name, manifest_path=manifest, evidence=reports["good"])
    assert not gate.promoted and not next(r for r in gate.rows if r.metric == EVIDENCE_METRIC).ok
    why = "rescore evidence test"
    args = ["models", "promote", name, "--manifest", str(manifest), "--evidence", str(reports["escape"])]
    result = CliRunner().invoke(app, [*args, "--force", "--reason", why])
    assert result.exit_code == 0 and f"{name} v{version} is now @champion" in result.output, result.output
    from zerodefect.quality.models import ModelPromotion

    with record_session() as session:
        row = session.query(ModelPromotion).filter_by(model_name=name).one()
    recorded = {r["metric"]: r for r in json.loads(row.gate_rows_json)}
    assert recorded[EVIDENCE_METRIC]["ok"] and recorded[EVIDENCE_METRIC]["challenger"] == 0.0
    result = CliRunner().invoke(
        app, ["models", "promote", name, "--evidence", str(tmp_path / "missing.json")]
    )
    assert result.exit_code == 2 and "missing.json" in result.output
