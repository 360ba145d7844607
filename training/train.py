"""The training loop, in the style of torchvision's reference scripts: plain functions.

`fit` runs epochs of `train_one_epoch`, scores the validation split after each, keeps the best
weights by the task's validation score (AUROC, or mAP@0.5 for detectors), stops early when it
stalls, and writes a checkpoint every epoch so that `--resume` continues where a run was
interrupted. The task supplies only its dataset, its batch loss and its validation.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler

from zerodefect.inference.bundle import TTA_VIEWS
from zerodefect.models.classifier import InspectionClassifier
from zerodefect.training.config import Config
from zerodefect.training.data import ImageDataset
from zerodefect.training.distributed import (
    SeededAugment,
    World,
    average_buffers,
    broadcast,
    buffers_from_rank0,
    current,
    mean_across,
    wrap_for_training,
)
from zerodefect.training.health import DIVERGENCE_FACTOR
from zerodefect.training.metrics import binary_report

log = logging.getLogger(__name__)


def select_device(preference: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def make_loss(cfg: Config, targets: np.ndarray, single_logit: bool, num_classes: int) -> nn.Module:
    """BCE on the defect logit (soft or hard targets) or cross-entropy, with optional class
    weights so that the rarer defective class is not drowned out."""
    if single_logit:
        defective = float(np.sum(targets >= 0.5))
        ratio = (len(targets) - defective) / max(defective, 1.0)
        weight = {"none": 1.0, "balanced": ratio, "sqrt": ratio**0.5}[cfg.train.class_weighting]
        return nn.BCEWithLogitsLoss(pos_weight=torch.tensor([weight]))
    counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
    ratio = counts.sum() / np.maximum(counts, 1.0) / num_classes
    weights = {"none": np.ones(num_classes), "balanced": ratio, "sqrt": ratio**0.5}[cfg.train.class_weighting]
    return nn.CrossEntropyLoss(
        weight=torch.tensor(weights, dtype=torch.float32), label_smoothing=cfg.train.label_smoothing
    )


def compute_loss(loss_fn: nn.Module, logits: torch.Tensor, targets: torch.Tensor, single_logit: bool):
    if single_logit:
        return loss_fn(logits[:, 0], targets.float())
    return loss_fn(logits, targets)


BatchLoss = Callable[[nn.Module, Any, torch.device], torch.Tensor]


class NonFiniteLoss(ArithmeticError):
    """A batch loss became NaN or infinite: the weights are lost, training cannot go on."""


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    batch_loss: BatchLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    ema: AveragedModel | None = None,
    on_batch: Callable[[float], None] | None = None,
    grad_clip: float | None = None,
    world: World | None = None,
) -> float:
    """One pass over the training data; returns the mean loss per image.

    `batch_loss(model, batch, device)` is the task's loss for one loader batch, whose first
    element holds the images. Under DDP (`world`) each process holds its share of the global
    batch, and the loss reported is the global batch's mean, the same on every process.
    """
    world = world or World()
    model.train()
    total, count = 0.0, 0
    for step, batch in enumerate(loader):
        loss = batch_loss(model, batch, device)
        value = mean_across(world, loss).item()
        if not math.isfinite(value):
            # Stepping on it would turn every weight into NaN; stop here, with the step named.
            raise NonFiniteLoss(f"the loss became {value} at step {step + 1} of the epoch")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        total += value * len(batch[0])
        count += len(batch[0])
        if on_batch:
            on_batch(value)
    return total / max(count, 1)


@torch.no_grad()
def predict(
    model: InspectionClassifier, images: np.ndarray, device: torch.device, batch_size: int = 64
) -> np.ndarray:
    """Class probabilities [N, C] for cached uint8 images, with the model's TTA setting.

    `batch_size` counts forward-pass images: with TTA each image is several views, so fewer
    images go per call (8 dihedral views of 64 images at 300 px would need ~24 GB).
    """
    model.eval()
    batch_size = max(1, batch_size // TTA_VIEWS[model.tta])
    out = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        out.append(model(batch).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def defect_scores(probabilities: np.ndarray, good_index: int | None) -> np.ndarray:
    """1 - P(good): the score the engine thresholds (see zerodefect.inference.engine)."""
    if good_index is None:
        return probabilities.max(axis=1)
    return 1.0 - probabilities[:, good_index]


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    # Why training stopped abnormally (a NaN loss, a diverging loss), or None.
    failure: str | None = None


def ema_tau(decay: float) -> float:
    """The EMA warm-up's time constant in updates, for a final `decay`.

    The decay at update n is decay * (1 - exp(-n / tau)) (Ultralytics' ModelEMA; timm's
    ModelEmaV3 warms up likewise), so early on the average follows the model and the random
    head is forgotten within a few updates. This tau is the one for which the averaging window,
    1 / (1 - decay_n), stays under about a third of the updates made so far at every n, whatever
    the steps per epoch or the schedule's length: the average is never dominated by weights
    from long ago (a fixed 0.998 over 110 steps per epoch was still 80 % the first step's weights
    after epoch 1, 52 % after epoch 3). For Ultralytics' decay 0.9999 it gives 2171 updates, their
    2000; for 0.998, 161.
    """
    return 2.0 / ((1.0 - decay) * math.log(1.0 / (1.0 - decay)))


def ema_decay_at(updates: int, decay: float, tau: float) -> float:
    """The EMA decay for the `updates`-th update (1-based): warming up to `decay`."""
    return decay * (1.0 - math.exp(-updates / tau))


def make_ema(model: nn.Module, decay: float, tau: float | None = None) -> AveragedModel:
    """An EMA of `model` (parameters and buffers) whose decay warms up with the number of
    updates (`ema_decay_at`); the count is the AveragedModel's own, so a resumed run goes on
    with the decay where it stopped."""
    tau = tau or ema_tau(decay)

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], done: torch.Tensor | int) -> None:
        weight = 1.0 - ema_decay_at(int(done) + 1, decay, tau)
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (BatchNorm's batch count)
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return AveragedModel(model, multi_avg_fn=update, use_buffers=True)


def warmup_share(cfg: Config) -> float:
    """The learning-rate warm-up as a share of the schedule (OneCycleLR's pct_start):
    train.warmup_pct, but at most train.max_warmup_epochs, so that a longer schedule does not
    also warm up for longer (a 6-epoch run that warmed up twice as long as a 3-epoch one had
    val mAP 0.575 after epoch 1, against 1.0)."""
    t = cfg.train
    return min(t.warmup_pct, t.max_warmup_epochs / t.epochs)


def counts_for_early_stop(epoch: int, epochs: int) -> bool:
    """Whether a stale `epoch` (0-based) counts towards early stopping: only in the second half
    of the schedule. Under the one-cycle schedule a small val split's score plateaus, noisily,
    while the learning rate is high, and the model still gains as the rate anneals; patience
    counted from the start stops a run before those epochs (ELPV, 22 epochs: val AUROC 0.925 at
    epoch 6, stopped at epoch 11, test AUROC 0.920; run to 20 epochs with this rule: 0.945)."""
    return 2 * (epoch + 1) > epochs


def _one_cycle_share(share: float, total_steps: int) -> float:
    """`share` as OneCycleLR can take it: a warm-up of exactly one step makes its first phase
    end where it starts and divides by zero (torch 2.x), so it becomes no warm-up at all."""
    return share * 0.999 if abs(share * total_steps - 1.0) < 1e-6 else share


def warmup_steps(cfg: Config, steps_per_epoch: int) -> int:
    """The warm-up's length in optimizer steps."""
    return round(warmup_share(cfg) * steps_per_epoch * cfg.train.epochs)


def make_scheduler(
    cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.OneCycleLR:
    """One cycle over the schedule: warm-up (`warmup_share`) to train.lr, cosine down to ~0."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=cfg.train.lr,
        epochs=cfg.train.epochs,
        steps_per_epoch=steps_per_epoch,
        pct_start=_one_cycle_share(warmup_share(cfg), steps_per_epoch * cfg.train.epochs),
    )


def _eval_model(model: nn.Module, ema: AveragedModel | None) -> nn.Module:
    return ema.module if ema is not None else model  # type: ignore[return-value]


def fit_classifier(
    cfg: Config,
    model: InspectionClassifier,
    train_images: np.ndarray,
    train_targets: np.ndarray,
    val_images: np.ndarray,
    val_defective: np.ndarray,
    good_index: int | None,
    num_classes: int,
    run_dir: Path,
    augment=None,
    resume: bool = False,
    on_batch: Callable[[float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train a classifier, keeping the weights with the best validation AUROC."""
    loss_fn = make_loss(cfg, train_targets, model.single_logit, num_classes)

    def batch_loss(net: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        images, targets = batch[0].to(device, non_blocking=True), batch[1].to(device)
        return compute_loss(loss_fn.to(device), net.logits(images), targets, net.single_logit)

    def validate(net: nn.Module, device: torch.device) -> dict[str, Any]:
        val = binary_report(val_defective, defect_scores(predict(net, val_images, device), good_index), 0.5)
        score = val["auroc"] if val["auroc"] is not None else val["accuracy"]
        return {
            "score": score,
            "val_auroc": val["auroc"],
            "val_accuracy": val["accuracy"],
            "val_f1": val["f1"],
        }

    dataset = ImageDataset(train_images, train_targets, augment)
    return fit(cfg, model, dataset, batch_loss, validate, run_dir, augment, None, resume, on_batch, on_epoch)


def fit(
    cfg: Config,
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    batch_loss: BatchLoss,
    validate: Callable[[nn.Module, torch.device], dict[str, Any]],
    run_dir: Path,
    augment=None,
    collate_fn: Callable | None = None,
    resume: bool = False,
    on_batch: Callable[[float], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> FitResult:
    """Train with early stopping on the validation score; checkpoints go to run_dir/last.pt.

    `validate(model, device)` returns the epoch's validation metrics with "score" (higher is
    better: AUROC for classifiers, mAP@0.5 for detectors) deciding the best epoch.

    In a DDP process group (zerodefect.training.distributed) every process trains its share of
    each global batch of `train.batch_size`; rank 0 alone validates and writes checkpoints.
    """
    world = current()
    device = select_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    if cfg.train.freeze_stages:
        frozen = model.freeze_leading_stages(cfg.train.freeze_stages)
        log.info("froze %d tensors in the first %d stages", frozen, cfg.train.freeze_stages)
    model.to(device).to(memory_format=torch.channels_last)
    seeded = SeededAugment(dataset, augment, cfg.train.seed)
    # The order is a function of (seed, epoch): each process takes every world.size-th sample of
    # one permutation, so together their shards of step k are the one-process batch k.
    sampler = DistributedSampler(
        seeded, num_replicas=world.size, rank=world.rank, shuffle=True, seed=cfg.train.seed, drop_last=True
    )
    loader = DataLoader(
        seeded,
        batch_size=cfg.train.batch_size // world.size,
        sampler=sampler,
        drop_last=len(dataset) > cfg.train.batch_size,
        num_workers=0,
        collate_fn=collate_fn,
    )
    batch_loss = wrap_for_training(world, model, batch_loss)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = make_scheduler(cfg, optimizer, max(len(loader), 1))
    ema = make_ema(model, cfg.train.ema_decay, cfg.train.ema_tau) if cfg.train.ema_decay else None

    start_epoch, best_score, best_epoch, stale, history, spent = 0, -1.0, -1, 0, [], 0.0
    best_state: dict[str, torch.Tensor] = {}
    checkpoint = run_dir / "last.pt"
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        start_epoch, best_score, best_epoch = (
            state["epoch"] + 1,
            state["best_score"],
            state["best_epoch"],
        )
        stale, history, best_state = state["stale"], state["history"], state["best_state"]
        spent = state.get("seconds", 0.0)
        torch.set_rng_state(state["torch_rng"])
        log.info(
            "resuming %s at epoch %d (best score %.4f at epoch %d)",
            run_dir,
            start_epoch + 1,
            best_score,
            best_epoch + 1,
        )

    started = time.perf_counter()
    failure = None
    epoch = start_epoch - 1
    # A resumed run that had already stopped early goes straight to its results.
    last_epoch = start_epoch if stale >= cfg.train.early_stopping_patience else cfg.train.epochs
    for epoch in range(start_epoch, last_epoch):
        tick = time.perf_counter()
        # The sample order and each sample's augmentation are seeded by the epoch, so a run and
        # its resumption draw the same as an uninterrupted run.
        sampler.set_epoch(epoch)
        seeded.epoch = epoch
        try:
            loss = train_one_epoch(
                model,
                loader,
                batch_loss,
                optimizer,
                scheduler,
                device,
                ema,
                on_batch,
                cfg.train.grad_clip,
                world,
            )
        except NonFiniteLoss as exc:
            failure = f"epoch {epoch + 1}: {exc}"
            log.error("training stopped: %s", failure)
            break
        lowest = min((row["train_loss"] for row in history), default=None)
        if lowest is not None and loss > DIVERGENCE_FACTOR * max(lowest, 1e-8):
            failure = (
                f"epoch {epoch + 1}: the training loss diverged to {loss:.4g}, over "
                f"{DIVERGENCE_FACTOR:g}x the best epoch's {lowest:.4g}"
            )
            log.error("training stopped: %s", failure)
            break
        average_buffers(world, model)
        if ema is not None:
            average_buffers(world, ema)
        evaluated = _eval_model(model, ema)
        # Rank 0 validates; every process gets its score, so they all stop at the same epoch.
        metrics = broadcast(world, validate(evaluated, device) if world.main else None)
        score = metrics.pop("score")
        row = {
            "epoch": epoch + 1,
            "train_loss": loss,
            **metrics,
            "seconds": time.perf_counter() - tick,
            "lr": scheduler.get_last_lr()[0],
        }
        history.append(row)
        if score > best_score:
            best_score, best_epoch, stale = score, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in evaluated.state_dict().items()}
        elif counts_for_early_stop(epoch, cfg.train.epochs):
            stale += 1
        if world.main:
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "epoch": epoch,
                    "best_score": best_score,
                    "best_epoch": best_epoch,
                    "stale": stale,
                    "history": history,
                    "best_state": best_state,
                    "torch_rng": torch.get_rng_state(),
                    "seconds": spent + time.perf_counter() - started,
                },
                checkpoint,
            )
        if on_epoch:
            on_epoch(row)
        if stale >= cfg.train.early_stopping_patience:
            log.info("early stop: the validation score has not improved for %d epochs", stale)
            break
    buffers_from_rank0(world, model)
    if world.main:
        torch.save({"model": best_state, "epoch": best_epoch, "val_score": best_score}, run_dir / "best.pt")
    seconds = spent + time.perf_counter() - started
    return FitResult(best_state, best_epoch, best_score, len(history), seconds, history, failure)
