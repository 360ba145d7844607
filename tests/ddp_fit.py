"""The shared `fit` on a tiny model, in one process or as one of 2 DDP processes (tests/test_ddp.py).

A module of its own so that the spawned processes import only what they run (not the CLI,
MLflow or the other tests)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from zerodefect.datasets.augment import build_augmentations
from zerodefect.training import distributed
from zerodefect.training.config import Config
from zerodefect.training.data import ImageDataset
from zerodefect.training.train import fit


def _config(folder: Path) -> Config:
    return Config.model_validate(
        {
            "name": "fit",
            "data": {"manifest": str(folder / "unused.jsonl")},
            "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "ema_decay": 0.9},
        }
    )


def net() -> nn.Module:
    """No batch norm: every sample's loss depends on itself only, so 2 half-batches average to
    exactly the full batch's gradient (batch norm couples samples: docs in training/distributed.py)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )


def _loss(model: nn.Module, batch, device: torch.device) -> torch.Tensor:
    images, targets = batch
    logits = model(images.to(device).permute(0, 3, 1, 2).float() / 255)
    return nn.functional.cross_entropy(logits, targets.to(device))


def train_tiny(folder: Path) -> dict:
    """The shared `fit` on 36 generated 16-px images with D4 augmentation (36 is not a multiple
    of the batch: the last part of each epoch is dropped alike in 1 and 2 processes)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (36, 16, 16, 3), dtype=np.uint8)
    targets = (images[:, :8].mean(axis=(1, 2, 3)) > images[:, 8:].mean(axis=(1, 2, 3))).astype(np.int64)
    augment = build_augmentations([{"name": "D4"}])
    model = net()
    result = fit(
        _config(folder),
        model,
        ImageDataset(images, targets, augment),
        _loss,
        # A score in (0, 1] that the weights move: rank 0's, broadcast, picks the best epoch.
        lambda evaluated, device: {"score": 1 / (1 + evaluated[4].weight.detach().abs().sum().item())},
        folder,
        augment,
    )
    return {"best": result.best_state, "final": model.state_dict(), "history": result.history}


def fit_rank(rank: int, port: int, folder: Path) -> None:
    """One of 2 processes, with the environment torchrun would give it."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)  # 2 processes on 2 cores
    assert distributed.start("cpu").size == 2
    out = train_tiny(folder)
    distributed.finish()
    torch.save(out, folder / f"rank{rank}.pt")
