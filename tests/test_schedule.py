"""The training recipe does not depend on the schedule's length: the EMA warms up with the
number of updates (it is not the random head after epoch 1), the learning-rate warm-up is
capped, and a schedule twice as long is not behind at the same epoch (tiny generated data)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from zerodefect.models.detector import build_detector
from zerodefect.training.config import Config
from zerodefect.training.detection import DetectionDataset, collate, detector_loss
from zerodefect.training.train import ema_decay_at, ema_tau, fit, make_scheduler, warmup_steps

from .synthetic import spot_arrays

SIZE, BATCH, TRAIN, VAL = 64, 4, 32, 16  # 8 steps per epoch


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    """These fits set torch's thread count (train.threads: 1) for the process; later tests'
    runs must keep the default, or their numerics (and a diverging run's path) change."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _config(epochs: int) -> Config:
    return Config.model_validate(
        {
            "name": "schedule",
            "task": "detection",
            "data": {"manifest": "unused.jsonl"},
            "model": {"input_size": SIZE},
            "train": {
                "epochs": epochs,
                "batch_size": BATCH,
                "lr": 0.002,
                "warmup_pct": 0.15,
                "max_warmup_epochs": 0.25,
                # The new user's decay: 0.998 averages over ~500 updates, 15 to 30 times these runs.
                "ema_decay": 0.998,
                "grad_clip": 10.0,
                "threads": 1,
                "early_stopping_patience": 99,
            },
        }
    )


@torch.no_grad()
def _val_loss(net: torch.nn.Module, images: np.ndarray, truths: list) -> float:
    """The FCOS loss on the val images, the model in eval mode: a continuous measure a tiny run
    moves (mAP on 16 images saturates or stays at 0)."""
    net.eval()
    batch = collate(list(DetectionDataset(images, truths)))
    return float(detector_loss(net, batch, torch.device("cpu")))


def _run(epochs: int, run_dir: Path) -> tuple[float, list[dict]]:
    """(the val loss before training, per epoch the raw and the EMA model's val loss)."""
    train_images, train_truths = spot_arrays(TRAIN, SIZE, seed=0)
    val_images, val_truths = spot_arrays(VAL, SIZE, seed=1)
    torch.manual_seed(0)
    model, _ = build_detector(["spot"], SIZE, "imagenet", fpn_channels=32, head_convs=1)
    initial = _val_loss(model, val_images, val_truths)

    def validate(net: torch.nn.Module, device: torch.device) -> dict:
        ema = _val_loss(net, val_images, val_truths)
        return {"score": -ema, "ema": ema, "raw": _val_loss(model, val_images, val_truths)}

    run_dir.mkdir()
    dataset = DetectionDataset(train_images, train_truths)
    result = fit(_config(epochs), model, dataset, detector_loss, validate, run_dir, None, collate)
    return initial, result.history


@pytest.fixture(scope="module")
def schedules(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[float, list[dict]]]:
    root = tmp_path_factory.mktemp("schedules")
    return {epochs: _run(epochs, root / str(epochs)) for epochs in (2, 4)}


def test_the_ema_warm_up_follows_the_updates() -> None:
    # Ultralytics' pair (0.9999, tau 2000) is what the rule gives for their decay.
    assert ema_tau(0.9999) == pytest.approx(2171, abs=1)
    tau = ema_tau(0.998)
    decays = np.array([ema_decay_at(n, 0.998, tau) for n in range(1, 20001)])
    assert decays[0] < 0.01 and decays[-1] == pytest.approx(0.998) and np.all(np.diff(decays) >= 0)
    # Its averaging window never exceeds ~a third of the updates made so far, and the first
    # update's weights are gone after 8 updates (these runs' first epoch).
    window = 1.0 / (1.0 - decays)
    assert np.all(window[10:] <= 0.37 * np.arange(11, 20001))
    assert math.prod(decays[1:8]) < 1e-9
    cfg = _config(40)
    assert warmup_steps(cfg, 100) == 25  # a quarter epoch, not 15 % of 40 epochs (600 steps)
    assert warmup_steps(_config(1), 100) == 15
    # A one-epoch cap over one step per epoch is a one-step warm-up, which OneCycleLR cannot
    # take as such (it divides by zero): the schedule runs without warm-up instead.
    cfg.train.max_warmup_epochs = 1.0
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.train.lr)
    scheduler = make_scheduler(cfg, optimizer, 1)
    for _ in range(cfg.train.epochs):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] < cfg.train.lr / 100


def test_the_averaged_weights_are_not_the_initial_ones_after_epoch_one(schedules) -> None:
    initial, history = schedules[2]
    first = history[0]
    # The raw model learned in 8 steps; the EMA (0.998 with no warm-up kept the weights of the
    # first update, ~the initial loss) has followed it at least 90 % of the way.
    assert first["raw"] < 0.8 * initial, (initial, first)
    assert first["ema"] - first["raw"] <= 0.1 * (initial - first["raw"]), (initial, first)


def test_twice_the_schedule_is_not_behind_at_the_same_epoch(schedules) -> None:
    initial, short = schedules[2]
    _, long = schedules[4]
    for a, b in zip(short, long, strict=False):
        # The same warm-up, so epoch 1 is the same run up to the learning rate's slower decay;
        # at epoch 2 the short run has annealed to ~0 while the long one is at its peak rate,
        # which may cost it a little: at most 10 % of the loss the short run has removed.
        assert b["ema"] <= a["ema"] + 0.1 * (initial - a["ema"]), (a, b)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)


def _tiny_loss(model: torch.nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    return model.linear(batch.to(device)).pow(2).mean()


@pytest.mark.parametrize(("epochs", "patience", "expected"), [(8, 1, 5), (8, 2, 6), (3, 1, 2)])
def test_early_stopping_waits_for_the_second_half_of_the_schedule(
    tmp_path: Path, epochs: int, patience: int, expected: int
) -> None:
    """A val score that only falls after epoch 1 stops the run `patience` epochs into the
    schedule's second half, never while the learning rate is still at its peak."""
    cfg = _config(epochs).model_copy(deep=True)
    cfg.train.early_stopping_patience = patience
    cfg.train.ema_decay = None
    scores = iter(range(100, 0, -1))

    def validate(net: torch.nn.Module, device: torch.device) -> dict:
        return {"score": float(next(scores))}

    data = [torch.randn(2) for _ in range(BATCH * 2)]
    result = fit(cfg, _Tiny(), data, _tiny_loss, validate, tmp_path, None, torch.stack)
    assert result.epochs_run == expected
    assert result.best_epoch == 0
