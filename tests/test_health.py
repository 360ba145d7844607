"""Failed runs fail: a collapsed run exits non-zero and registers nothing; the pre-flight names
the usual suspects; progress reaches a log file without a terminal; undefined rates are null."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.inference.result import Detections
from zerodefect.training.config import Config
from zerodefect.training.health import TrainingFailed, check_run, preflight
from zerodefect.training.metrics import binary_report
from zerodefect.training.progress import PlainProgress
from zerodefect.training.registry import CHALLENGER, alias_version
from zerodefect.training.train import FitResult

from .bundles import PASS_ALL, make_bundle, register
from .test_pipeline import MODEL, tiny_config


def test_a_collapsed_run_exits_non_zero_and_leaves_the_challenger_alone(
    data_dir: Path, folder_dataset: Path, tmp_path: Path
) -> None:
    before = register(
        make_bundle(tmp_path / "v1", PASS_ALL, MODEL, classes=("good", "scratch")), MODEL, CHALLENGER
    )
    config = tiny_config(tmp_path, folder_dataset)
    # The learning rate x1000: the loss explodes and the model ranks parts at chance.
    result = CliRunner().invoke(app, ["train", str(config), "--set", "train.lr=3"])
    assert result.exit_code == 3, result.output
    assert "training failed: the best val AUROC was 0.5000" in result.output and "at chance" in result.output
    assert "train.lr 3 is high" in result.output and "nothing was registered" in result.output
    client = mlflow.MlflowClient()
    assert [v.version for v in client.search_model_versions(f"name='{MODEL}'")] == [int(before)]
    assert alias_version(MODEL, CHALLENGER).version == int(before)
    (run_dir,) = (data_dir / "runs" / "tiny").iterdir()
    failure = json.loads((run_dir / "failure.json").read_text())
    assert "at chance" in failure["what"] and len(failure["history"]) == 3 and (run_dir / "best.pt").is_file()
    assert not (run_dir / "summary.json").exists() and not (run_dir / "bundle").exists()
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FAILED" and "at chance" in run.data.tags["failure"]


def _fit(best_score: float, best_epoch: int, epochs_run: int, failure: str | None = None) -> FitResult:
    return FitResult({}, best_epoch, best_score, epochs_run, 1.0, [], failure)


def _config(task: str = "classification", **train) -> Config:
    return Config.model_validate(
        {"name": "t", "task": task, "data": {"manifest": "m.jsonl"}, "train": {"epochs": 6, **train}}
    )


def _manifest(task: str, samples: list[Sample], classes: list[str]) -> Manifest:
    good = "good" if task == "classification" else None
    return Manifest(task=task, classes=classes, samples=samples, good_class=good)


def test_check_run_refuses_chance_nan_and_an_early_stop_at_epoch_one() -> None:
    cfg = _config()
    manifest = _manifest(
        "classification",
        [Sample(f"{i}.png", ["good" if i % 2 else "bad"], "train") for i in range(40)],
        ["good", "bad"],
    )
    pre = preflight(cfg, manifest, manifest.split("train"), 10)
    check_run(cfg, _fit(0.93, 4, 6), pre)  # a run that learned passes quietly
    with pytest.raises(TrainingFailed, match=r"best val AUROC was 0.5400 .* at chance"):
        check_run(cfg, _fit(0.54, 3, 6), pre)
    with pytest.raises(TrainingFailed, match="early stop with the best val AUROC 0.7000 at epoch 1"):
        check_run(cfg, _fit(0.70, 0, 3), pre)
    check_run(cfg, _fit(0.90, 0, 3), pre)  # best at epoch 1 but over the floor: a quick learner
    with pytest.raises(TrainingFailed, match="the loss became nan") as failed:
        check_run(cfg, _fit(0.9, 0, 1, "epoch 2: the loss became nan at step 3 of the epoch"), pre)
    assert any("grad_clip" in c for c in failed.value.causes)
    det = _config("detection")
    with pytest.raises(TrainingFailed, match=r"mAP@0.5 was 0.0000"):
        check_run(det, _fit(0.0, 5, 6), preflight(det, manifest, [], 10))


def test_preflight_names_the_ema_the_warmup_tiny_classes_and_small_boxes() -> None:
    # The new user's detector: EMA 0.998 over 110 steps per epoch, with no EMA warm-up (a tau of
    # a thousandth of an update keeps the decay at 0.998 from the first update on).
    cfg = _config("detection", ema_decay=0.998, ema_tau=1e-3, warmup_pct=0.005, lr=0.05)
    classes = ["scratch", "pit", "hole"]
    scratch, pit = (
        Detections.from_labels([c], [[0, 0, size, size]], classes)
        for c, size in (("scratch", 40), ("pit", 3))
    )
    samples = [Sample(f"{i}.png", ["scratch"], "train", scratch) for i in range(30)] + [
        Sample("s.png", ["pit"], "train", pit)
    ]
    manifest = _manifest("detection", samples, classes)
    boxes = [np.array([[0, 0, 12.8, 12.8]], np.float32)] * 30 + [
        np.array([[0, 0, 0.96, 0.96]], np.float32)
    ] * 30
    pre = preflight(cfg, manifest, samples, 110, boxes)
    assert pre.ema_half_life_steps == pytest.approx(346.2, abs=0.1)
    assert pre.ema_initial_share_after_epoch1 == pytest.approx(0.998**109)  # 80 %
    assert pre.warmup_steps == 3 and pre.total_steps == 660
    assert pre.smallest_box_px == pytest.approx(0.96) and pre.boxes_under_stride == pytest.approx(0.5)
    text = "\n".join(pre.warnings)
    assert "ema_decay 0.998 against 110 steps per epoch" in text and "80%" in text
    assert "warm-up of 3 steps" in text and "train.lr 0.05 is high" in text
    assert "no training examples: hole" in text and "pit (1)" in text
    assert "50% of the boxes are under 8 px" in text
    summary = pre.summary()
    assert "110 steps/epoch x 6 epochs = 660 steps" in summary and "half-life 346 steps" in summary
    assert "smallest box 1.0 px" in summary
    # The default warm-up of the EMA forgets the initial weights within the first epoch.
    warmed = preflight(_config("detection", ema_decay=0.998), manifest, samples, 110, boxes)
    assert warmed.ema_initial_share_after_epoch1 < 1e-6
    assert not any("ema_decay" in w for w in warmed.warnings)


def test_train_logs_progress_lines_without_a_terminal(
    data_dir: Path, folder_dataset: Path, tmp_path: Path
) -> None:
    config = tiny_config(tmp_path, folder_dataset, train__epochs=3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "zerodefect", "train", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: dict[str, float] = {}
    watchdog = threading.Timer(240, proc.kill)  # bounded even if the process hangs silently
    watchdog.start()
    try:
        for line in proc.stdout:  # a pipe, not a terminal: no live bar can be drawn
            now = time.monotonic()
            if line.startswith("pre-flight:"):
                seen.setdefault("start", now)
            if line.startswith("training: ") and "loss" in line and "ETA" in line:
                seen.setdefault("progress", now)
                break
    finally:
        watchdog.cancel()
        proc.kill()
        proc.wait()
    assert "start" in seen and "progress" in seen
    assert seen["progress"] - seen["start"] < 30


def test_plain_progress_prints_at_the_first_step_and_the_end() -> None:
    console = Console(record=True, width=200, force_terminal=False)
    with PlainProgress(console, every_seconds=3600) as progress:
        task = progress.add_task("training", total=10, info="")
        for step in range(10):
            progress.update(task, advance=1, info=f"loss {1 / (step + 1):.4f}")
    lines = console.export_text().splitlines()
    assert len(lines) == 2  # step 1, then done: none in between at this interval
    assert lines[0].startswith("training: 1/10 (10%) loss 1.0000") and "ETA" in lines[0]
    assert lines[1].startswith("training: 10/10 (100%) loss 0.1000")


def test_rates_without_a_denominator_are_null_and_flagged() -> None:
    only_defective = binary_report(np.array([True, True, True]), np.array([0.9, 0.8, 0.1]), 0.5)
    assert only_defective["false_reject_rate"] is None and only_defective["escape_rate"] == pytest.approx(
        1 / 3
    )
    assert any(n.startswith("no clean parts") for n in only_defective["notes"])
    only_good = binary_report(np.array([False, False]), np.array([0.1, 0.2]), 0.5)
    assert only_good["escape_rate"] is None and only_good["precision"] is None and only_good["f1"] is None
    assert only_good["false_reject_rate"] == 0.0 and "no defective parts" in only_good["notes"][0]
    both = binary_report(np.array([True, False]), np.array([0.9, 0.1]), 0.5)
    assert both["notes"] == [] and both["escape_rate"] == 0.0 and both["false_reject_rate"] == 0.0


def test_fit_stops_on_a_nan_loss_and_on_a_diverging_one(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import TensorDataset

    from zerodefect.training.train import fit

    cfg = _config(batch_size=4, early_stopping_patience=10)
    data = TensorDataset(torch.randn(16, 4), torch.zeros(16))
    calls = {"n": 0}

    def nan_at_step_6(net, batch, device):
        calls["n"] += 1
        loss = (net(batch[0]) ** 2).mean()
        return loss * float("nan") if calls["n"] == 6 else loss

    def validate(net, device):
        return {"score": 0.9}

    result = fit(cfg, torch.nn.Linear(4, 1), data, nan_at_step_6, validate, tmp_path)
    # Epoch 1 (4 steps) finished; the NaN came at the 2nd step of epoch 2, before any step on it.
    assert result.failure == "epoch 2: the loss became nan at step 2 of the epoch"
    assert result.epochs_run == 1 and calls["n"] == 6

    epoch = {"n": 0}

    def exploding(net, batch, device):
        base = (net(batch[0]) ** 2).mean() * 0
        return base + 12.0 ** epoch["n"]

    def count_epochs(net, device):
        epoch["n"] += 1
        return {"score": 0.9}

    (tmp_path / "b").mkdir()
    result = fit(cfg, torch.nn.Linear(4, 1), data, exploding, count_epochs, tmp_path / "b")
    # Epoch 1 averages 1.0, epoch 2 averages 12: over 10x the best epoch's loss.
    assert result.failure is not None and "diverged to 12" in result.failure and result.epochs_run == 1
