"""End to end on generated images: train -> export -> parity -> evaluate -> register -> promote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.datasets.manifest import Manifest
from zerodefect.inference.bundle import BundleError, sha256_file
from zerodefect.inference.engine import Engine
from zerodefect.inference.signing import key_id, signing_key
from zerodefect.inference.source import fetch_bundle
from zerodefect.models.classifier import build_classifier
from zerodefect.training.config import ConfigError, load_config
from zerodefect.training.data import load_images
from zerodefect.training.export import ExportParityError, export_bundle
from zerodefect.training.pipeline import run_training
from zerodefect.training.registry import CHALLENGER, CHAMPION, alias_version, promote
from zerodefect.training.train import fit_classifier, predict

from .bundles import PASS_ALL, make_bundle, register

MODEL = "synthetic-parts"


def tiny_config(folder: Path, dataset: Path, **changes) -> Path:
    config = {
        "name": "tiny",
        "data": {
            "manifest": str(folder / "manifest.jsonl"),
            "source": {
                "format": "folders",
                "args": {"root": str(dataset)},
                "split": {"test": 0.25, "val": 0.25},
            },
        },
        "model": {"input_size": 64},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.003},
        "augment": [{"name": "D4"}],
        "export": {"tta": "flips"},
        "gate": {},
        "mlflow": {"experiment": "tests", "registered_model": MODEL},
    }
    for key, value in changes.items():
        section, name = key.split("__")
        config[section][name] = value
    path = folder / f"config-{len(list(folder.glob('config-*')))}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def first_run(module_store: Path, folder_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("cfg")
    path = tiny_config(folder, folder_dataset)
    return run_training(load_config(path), path), folder


def test_bundle_is_self_describing_and_matches_pytorch(first_run) -> None:
    outcome, _ = first_run
    meta = json.loads((outcome.bundle_dir / "bundle.json").read_text())
    assert meta["task"] == "classification" and meta["classes"] == ["good", "scratch"]
    assert meta["good_class"] == "good" and meta["tta"] == "flips"
    assert meta["input"]["height"] == 64 and meta["input"]["mean"] == pytest.approx([0.5] * 3)
    assert meta["run_id"] == outcome.run_id and len(meta["dataset_hash"]) == 64
    assert meta["onnx_sha256"] == sha256_file(outcome.bundle_dir / "model.onnx")
    assert 0 < meta["threshold"] < 1
    parity = outcome.report.data["parity"]
    assert parity["max_abs_diff"] <= 1e-4 and parity["decisions_equal"]

    # The engine, reading only the bundle, scores test images as the PyTorch model does.
    manifest = Manifest.read(Path(first_run[1]) / "manifest.jsonl")
    test = manifest.split("test")
    model, _ = build_classifier("tf_efficientnet_lite0", manifest.classes, "good", None)
    model.load_state_dict(torch.load(outcome.run_dir / "best.pt", weights_only=False)["model"])
    model.tta = "flips"
    images = load_images(manifest, test, (64, 64), "area")
    torch_scores = 1 - predict(model, images, torch.device("cpu"))[:, 0]
    engine = Engine.from_bundle(outcome.bundle_dir)
    from zerodefect.inference.preprocess import read_image

    results = engine.predict([read_image(manifest.resolve(s)) for s in test])
    assert np.max(np.abs(np.array([r.score for r in results]) - torch_scores)) <= 1e-4
    assert {r.verdict for r in results} <= {"pass", "reject"}
    assert all((r.verdict == "reject") == (r.score >= meta["threshold"]) for r in results)


def test_mlflow_run_version_and_alias(first_run) -> None:
    outcome, _ = first_run
    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.data.params["model.arch"] == "tf_efficientnet_lite0"
    assert run.data.tags["dataset_hash"] == outcome.report.data["trained_on_dataset_hash"]
    for key in (
        "test_auroc",
        "test_escape_rate",
        "test_false_reject_rate",
        "threshold",
        "parity_max_abs_diff",
    ):
        assert key in run.data.metrics
    assert len(client.get_metric_history(outcome.run_id, "train_loss")) == 3
    artifacts = {
        a.path
        for folder in ("bundle", "eval", "dataset")
        for a in client.list_artifacts(outcome.run_id, folder)
    }
    assert {
        "bundle/bundle.json",
        "bundle/model.onnx",
        "bundle/signature.json",
        "eval/roc.png",
        "eval/report.json",
        "dataset/manifest.jsonl",
    } <= artifacts
    version = alias_version(MODEL, CHALLENGER)
    assert (
        version is not None and version.run_id == outcome.run_id and str(version.version) == outcome.version
    )
    local = fetch_bundle(f"models:/{MODEL}@{CHALLENGER}")
    # Signed (after its metrics were written) by the data dir's key, made on first use.
    training_key = signing_key()
    assert Engine.from_bundle(local, trusted_keys=[training_key.public_key()]).meta.run_id == outcome.run_id
    assert version.tags["signing_key_id"] == key_id(training_key)


def _register_random(folder: Path, name: str, manifest: Path, threshold: float = PASS_ALL) -> str:
    """A version no better than chance (random weights, passing every part), as a careless or
    collapsed run would register it, tagged with the manifest the gate evaluates it on."""
    import mlflow

    version = register(make_bundle(folder, threshold, name, classes=("good", "scratch")), name, CHALLENGER)
    mlflow.MlflowClient().set_model_version_tag(name, version, "manifest", str(manifest))
    return version


def _promotions(name: str) -> list:
    from zerodefect.quality.db import make_engine, migrate, session_factory
    from zerodefect.quality.models import ModelPromotion
    from zerodefect.settings import get_settings

    url = get_settings().record_database_url
    migrate(url)
    with session_factory(make_engine(url))() as session:
        return list(session.query(ModelPromotion).filter_by(model_name=name).order_by(ModelPromotion.id))


def test_gate_floors_refuse_a_chance_model_without_a_champion(first_run, tmp_path: Path) -> None:
    _, folder = first_run
    name = "floors-only"
    version = _register_random(tmp_path / "random", name, folder / "manifest.jsonl")
    gate = promote(name)
    assert gate.champion is None and not gate.passed and not gate.promoted
    assert alias_version(name, CHAMPION) is None
    failed = {row.metric: row for row in gate.failures}
    # Passing every part: every defect escapes; a random model ranks at chance.
    assert failed["escape_rate"].challenger == 1.0 and failed["escape_rate"].note == "over the floor"
    assert failed["auroc"].challenger < 0.75 and failed["auroc"].floor == 0.75
    result = CliRunner().invoke(app, ["models", "promote", name])
    assert result.exit_code == 1 and "not promoted: escape_rate over the floor" in result.output
    assert alias_version(name, CHALLENGER).version == int(version)


def test_promotion_gate_blocks_a_worse_model_unless_forced(first_run, tmp_path: Path) -> None:
    outcome, folder = first_run
    first = promote(MODEL)
    assert first.passed, [row.as_dict() for row in first.rows]
    assert first.promoted and first.champion is None and first.recorded
    assert alias_version(MODEL, CHAMPION).version == int(outcome.version)

    # With a champion, the chance model fails both its floors and the comparison.
    worse = _register_random(tmp_path / "random", MODEL, folder / "manifest.jsonl")
    gate = promote(MODEL)
    assert not gate.passed and not gate.promoted and gate.champion == outcome.version
    assert alias_version(MODEL, CHAMPION).version == int(outcome.version)
    auroc = next(row for row in gate.rows if row.metric == "auroc")
    assert not auroc.ok and "under the floor" in auroc.note and "worse than the champion" in auroc.note

    result = CliRunner().invoke(app, ["models", "promote", MODEL])
    assert result.exit_code == 1 and "not promoted" in result.output
    # --force needs a reason; without one nothing moves.
    result = CliRunner().invoke(app, ["models", "promote", MODEL, "--force"])
    assert result.exit_code == 2 and "--reason" in result.output
    assert alias_version(MODEL, CHAMPION).version == int(outcome.version)
    why = "line 2 retooled; QA inspects 100% until v3"
    result = CliRunner().invoke(app, ["models", "promote", MODEL, "--force", "--reason", why])
    assert result.exit_code == 0 and "FORCED" in result.output and why in result.output
    champion = alias_version(MODEL, CHAMPION)
    assert champion.version == int(worse) and champion.tags["promotion_gate"] == "FORCED"
    assert champion.tags["forced_reason"] == why and why in champion.description
    # ... and the quality record keeps the audit trail of both promotions.
    rows = _promotions(MODEL)
    assert [(r.model_version, r.gate, r.reason) for r in rows] == [
        (outcome.version, "passed", None),
        (worse, "FORCED", why),
    ]
    assert rows[-1].previous_version == outcome.version


def test_tampered_model_is_refused(first_run, tmp_path: Path) -> None:
    outcome, folder = first_run
    copy = shutil.copytree(outcome.bundle_dir, tmp_path / "bundle")
    onnx = copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF
    onnx.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Engine.from_bundle(copy)
    result = CliRunner().invoke(app, ["evaluate", str(copy), "--manifest", str(folder / "manifest.jsonl")])
    assert result.exit_code == 2 and "tampered" in result.output


def test_evaluate_json_report_for_ci(first_run, tmp_path: Path) -> None:
    outcome, folder = first_run
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(outcome.bundle_dir),
            "--manifest",
            str(folder / "manifest.jsonl"),
            "--json",
            str(out),
            "--plots",
            str(tmp_path / "plots"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    for key in (
        "accuracy",
        "auroc",
        "f1",
        "escape_rate",
        "false_reject_rate",
        "threshold",
        "groups",
    ):
        assert key in report
    assert report["n"] == 12 and report["threshold"] == Engine.from_bundle(outcome.bundle_dir).meta.threshold
    assert (tmp_path / "plots" / "roc.png").stat().st_size > 1000


def test_parity_check_refuses_a_mismatch(first_run, tmp_path: Path) -> None:
    outcome, folder = first_run
    manifest = Manifest.read(folder / "manifest.jsonl")
    model, _ = build_classifier("tf_efficientnet_lite0", manifest.classes, "good", None)
    model.load_state_dict(torch.load(outcome.run_dir / "best.pt", weights_only=False)["model"])
    images = load_images(manifest, manifest.split("val"), (64, 64), "area")
    probs = predict(model, images, torch.device("cpu"))
    meta = Engine.from_bundle(outcome.bundle_dir).meta.model_copy(update={"tta": "none"})
    report = export_bundle(model, meta, tmp_path / "ok", images, probs)
    assert report.ok and (tmp_path / "ok" / "model.onnx").exists()
    shifted = probs + np.array([[-2e-3, 2e-3]], dtype=np.float32)  # a runtime that disagrees
    with pytest.raises(ExportParityError, match="max"):
        export_bundle(model, meta, tmp_path / "bad", images, shifted)
    assert not (tmp_path / "bad" / "model.onnx").exists()


def test_resume_reproduces_an_uninterrupted_run(folder_dataset: Path, tmp_path: Path) -> None:
    path = tiny_config(tmp_path, folder_dataset, train__epochs=3)
    cfg = load_config(path, ["train.early_stopping_patience=10"])
    from zerodefect.datasets.augment import build_augmentations
    from zerodefect.datasets.importers import import_folders
    from zerodefect.datasets.splits import assign_splits

    manifest = assign_splits(import_folders(folder_dataset), 0.25, 0.25)
    train_s, val_s = manifest.split("train"), manifest.split("val")
    data = (
        load_images(manifest, train_s, (64, 64), "area"),
        np.array([manifest.classes.index(s.label) for s in train_s]),
        load_images(manifest, val_s, (64, 64), "area"),
        np.array([manifest.is_defective(s) for s in val_s]),
    )

    def run(folder: Path, resume: bool, stop_after: int | None = None):
        torch.manual_seed(0)
        model, _ = build_classifier("tf_efficientnet_lite0", manifest.classes, "good", "imagenet")

        def on_epoch(row):
            if stop_after and row["epoch"] == stop_after:
                raise KeyboardInterrupt

        # A fresh augmentation pipeline per process, as after a restart: its RNG is seeded per epoch.
        augment = build_augmentations(cfg.augment + [{"name": "RandomBrightnessContrast", "p": 0.5}])
        return fit_classifier(cfg, model, *data, 0, 2, folder, augment, resume=resume, on_epoch=on_epoch)

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = run(tmp_path / "a", False)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", False, stop_after=1)
    resumed = run(tmp_path / "b", True)
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]
    assert [round(r["train_loss"], 5) for r in resumed.history] == [
        round(r["train_loss"], 5) for r in whole.history
    ]
    for name, tensor in whole.best_state.items():
        assert torch.allclose(tensor.float(), resumed.best_state[name].float(), atol=1e-5), name


def test_config_errors_name_the_key(tmp_path: Path, folder_dataset: Path) -> None:
    path = tiny_config(tmp_path, folder_dataset)
    assert load_config(path, ["train.epochs=7"]).train.epochs == 7
    with pytest.raises(ConfigError, match=r"train\.epoch: Extra inputs"):
        load_config(path, ["train.epoch=7"])
    with pytest.raises(ConfigError, match="not KEY=VALUE"):
        load_config(path, ["train.epochs"])


def test_cli_names_the_bad_file(tmp_path: Path, folder_dataset: Path) -> None:
    root = shutil.copytree(folder_dataset, tmp_path / "d")
    runner = CliRunner()
    out = tmp_path / "m.jsonl"
    assert runner.invoke(app, ["datasets", "import", "folders", str(root), "--out", str(out)]).exit_code == 0
    (root / "scratch" / "scratch_004.png").write_bytes(b"")
    result = runner.invoke(app, ["datasets", "validate", str(out)])
    assert result.exit_code == 2
    assert "scratch_004.png" in result.output and "empty image data" in result.output


def test_export_command_recalibrates_a_run(first_run, tmp_path: Path) -> None:
    outcome, _ = first_run
    out = tmp_path / "strict"
    args = [
        "export",
        str(outcome.run_dir),
        "--out",
        str(out),
        "--set",
        "export.tta=none",
        "--set",
        "calibration.target_escape_rate=0.0",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    meta = Engine.from_bundle(out).meta
    assert meta.tta == "none" and meta.target_escape_rate == 0.0 and meta.run_id == outcome.run_id
    result = CliRunner().invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2 and "no best.pt" in result.output


def test_int8_bundle_and_its_reported_cost(first_run, tmp_path: Path) -> None:
    import onnx

    outcome, folder = first_run
    manifest = str(folder / "manifest.jsonl")
    out = tmp_path / "int8"
    result = CliRunner().invoke(
        app, ["quantize", str(outcome.bundle_dir), "--manifest", manifest, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    meta = Engine.from_bundle(out).meta
    assert meta.quantization == "int8-qdq" and meta.run_id == outcome.run_id
    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    report_path = tmp_path / "int8.json"
    args = [
        "evaluate",
        str(out),
        "--manifest",
        manifest,
        "--json",
        str(report_path),
        "--baseline",
        str(outcome.bundle_dir),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["quantization"] == "int8-qdq"
    cost = report["versus_baseline"]["metrics"]["accuracy"]
    assert cost["delta"] == pytest.approx(report["accuracy"] - outcome.report.metric("accuracy"))
