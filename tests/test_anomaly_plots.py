"""PaDiM, the cheaper anomaly baseline, end to end on the generated parts of test_anomaly (found
scratches, ONNX parity); the heatmap sheet of the best, worst and borderline parts, picked right
and logged to MLflow; and no epoch-schedule warnings for a one-pass anomaly fit."""

from __future__ import annotations

from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest
from rich.console import Console

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.inference.engine import Engine
from zerodefect.training.anomaly_plots import pick_parts, save_heatmap_sheet, sheet_pixels
from zerodefect.training.config import Config
from zerodefect.training.health import TrainingFailed, check_run, preflight
from zerodefect.training.tasks.anomaly import check_anomaly_parity
from zerodefect.training.train import FitResult

from .bundles import ANOMALY_SIZE as SIZE
from .bundles import hand_made_anomaly_meta, make_anomaly_dataset, tiny_anomaly_config, train_from
from .synthetic import part_image
from .test_anomaly import reloaded


@pytest.fixture(scope="module")
def padim(module_store: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny anomaly run with model.anomaly.method padim: (config, outcome, what it printed)."""
    folder = tmp_path_factory.mktemp("padim")
    manifest = make_anomaly_dataset(folder / "parts")
    console = Console(record=True, width=200, force_terminal=False)
    cfg, outcome = train_from(folder, tiny_anomaly_config(manifest, "tiny-padim", method="padim"), console)
    return cfg, outcome, console.export_text()


def test_padim_finds_planted_scratches_with_onnx_parity(padim) -> None:
    cfg, outcome, _ = padim
    data = outcome.report.to_json()
    # The same bar as PatchCore's on these parts (tests/test_anomaly.py).
    assert data["image_auroc"] >= 0.95, data["image_auroc"]
    assert data["pixel_auroc"] >= 0.95, data["pixel_auroc"]
    assert data["pro"] >= 0.7, data["pro"]
    meta = Engine.from_bundle(outcome.bundle_dir).meta
    # Per-position statistics [D, h, w] at stride 8, no memory bank.
    assert meta.training["arch"] == "padim-tf_efficientnet_lite0"
    assert meta.training["statistics"] == [152, SIZE // 8, SIZE // 8] and "memory_bank" not in meta.training
    assert "Mahalanobis" in meta.outputs["scores"] and data["parity"]["decisions_equal"]
    # Independently of the run's own check: the saved best.pt in a fresh torch PaDiM against ORT.
    task, model, test = reloaded((cfg, outcome))
    assert type(model).__name__ == "PaDiM"
    reference = task.predict(model, test.images)
    engine = Engine.from_bundle(outcome.bundle_dir)
    tolerance = 1e-4 * engine.meta.threshold
    parity = check_anomaly_parity(engine, test.images, reference, tolerance, 10 * tolerance)
    assert parity.ok and parity.fields["max_heat_diff"] > 0
    assert 0 < (reference[0] >= engine.meta.threshold).sum() < len(test.images)


def test_the_heatmap_sheet_is_written_and_logged_to_mlflow(padim) -> None:
    _, outcome, _ = padim
    sheet = next(Path(p) for p in outcome.report.data["plots"] if p.endswith("heatmaps.png"))
    image = cv2.imread(str(sheet))
    assert image is not None and image.shape == (*sheet_pixels(3), 3)
    logged = [a.path for a in mlflow.MlflowClient().list_artifacts(outcome.run_id, "eval")]
    assert "eval/heatmaps.png" in logged and "eval/roc.png" in logged


def test_an_anomaly_run_has_no_epoch_schedule_warnings(padim) -> None:
    cfg, outcome, printed = padim
    assert "pre-flight: one pass over the train parts (24 good)" in printed
    # The classifier's schedule checks fire on this config (3 steps in all, no defect class
    # examples); none applies to a one-pass fit.
    assert "warning:" not in printed and "optimizer steps" not in printed
    # No "best epoch", and no NaN for the val score a good-only val cannot have.
    assert "fitted in one pass in" in printed and "nan" not in printed and "at epoch" not in printed
    # Even a schedule that would alarm a classifier (high lr, slow EMA, 10 epochs of which the
    # fit runs one) leaves an anomaly fit alone; too few good parts still warn.
    loud = {"lr": 0.05, "ema_decay": 0.998, "warmup_pct": 0.0, "epochs": 10}
    anomaly = cfg.model_copy(update={"train": cfg.train.model_copy(update=loud)})
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    pre = preflight(anomaly, manifest, manifest.split("train"), 3)
    assert pre.warnings == [] and pre.train_counts == {"good": 24}
    # One "epoch" of ten, under the 0.75 floor: an early stop for a classifier, not for a one-pass fit.
    check_run(anomaly, FitResult({}, 0, 0.7, 1, 1.0, []), pre)
    few = [Sample(f"{i}.png", ["good"], "train") for i in range(5)]
    assert preflight(anomaly, manifest, few, 1).warnings == [
        "classes with fewer than 10 training examples: good (5)"
    ]
    classifier = Config.model_validate({"name": "c", "data": {"manifest": "m.jsonl"}, "train": loud})
    classes = Manifest("classification", ["good", "scratch"], few, good_class="good")
    classifier_pre = preflight(classifier, classes, few, 3)
    assert any("optimizer steps" in w for w in classifier_pre.warnings)
    with pytest.raises(TrainingFailed, match="early stop"):
        check_run(classifier, FitResult({}, 0, 0.7, 1, 1.0, []), classifier_pre)


# Threshold 1.0. Caught defects 0, 1, 9 (margins 4, 0.5, 0), escapes 2, 3 (-0.8, -0.1); good
# parts passed 4, 5, 8 (0.9, 0.5, 0.07), false rejects 6, 7 (-2, -0.05).
SCORES = np.array([5.0, 1.5, 0.2, 0.9, 0.1, 0.5, 3.0, 1.05, 0.93, 1.0])
DEFECTIVE = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1], bool)


def test_the_sheet_picks_the_best_worst_and_borderline_parts() -> None:
    picks = pick_parts(DEFECTIVE, SCORES, 1.0, per_group=3)
    # Best: the surest catch, the surest pass, the next catch. Worst: the surest escape, the
    # surest false reject, the next escape. Borderline: of the rest, the closest to 1.0.
    assert picks == {"best": [0, 4, 1], "worst": [2, 6, 3], "borderline": [9, 7, 8]}
    # Nothing wrong: no worst part, and the borderline ones come from the correct verdicts.
    right = pick_parts(SCORES >= 1.0, SCORES, 1.0, per_group=2)
    assert right["worst"] == [] and right["best"] == [0, 4] and right["borderline"] == [9, 7]


def test_the_sheet_draws_three_panels_per_picked_part(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = np.stack([np.repeat(part_image(rng, 32, False)[0][..., None], 3, axis=2) for _ in SCORES])
    heatmaps = np.full((len(SCORES), 32, 32), 0.2, np.float32)
    masks = np.zeros((len(SCORES), 32, 32), bool)
    for i in np.flatnonzero(DEFECTIVE):
        masks[i, 8:16, 4:28] = True
        heatmaps[i, 8:16, 4:28] = SCORES[i]
    meta = hand_made_anomaly_meta(heat_floor=0.2)
    names = [f"parts/p{i}.png" for i in range(len(SCORES))]
    sheet = save_heatmap_sheet(
        tmp_path / "sheet.png",
        meta,
        images.__getitem__,
        heatmaps,
        masks,
        DEFECTIVE,
        SCORES,
        names,
        per_group=2,
    )
    assert sheet.picks == pick_parts(DEFECTIVE, SCORES, 1.0, per_group=2)
    assert sheet.panels == 3 * 6
    assert cv2.imread(str(sheet.path)).shape == (*sheet_pixels(2), 3)
