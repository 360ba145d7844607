"""Is a training run fit to ship? Before it starts: is its schedule sane? After: did it learn?

A run that collapsed (val metric at chance, loss NaN or diverging, or best at epoch 1 and
under the gate's floor) must never reach the registry: a station following an alias would
pass the defects it cannot see. `check_run` refuses such a run with what happened and the
usual suspects, which `preflight` measures before the first step: the EMA decay against the
steps per epoch, the warm-up against the schedule, empty or tiny classes, and boxes far
smaller than the detector's finest stride. A one-pass task (anomaly: a memory bank or feature
statistics, no optimizer) has no schedule: only its data and its val metric are checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.training.config import Config

# An epoch whose mean loss is this many times the best epoch's has diverged.
DIVERGENCE_FACTOR = 10.0
# Fewer training examples (images, or boxes for detectors) than this make a class "tiny".
TINY_CLASS = 10
# The FCOS pyramid's finest stride (models/detector.py): a box smaller than this on both sides
# covers at most one location of the finest level.
FINEST_STRIDE = 8


class TrainingFailed(RuntimeError):
    """A run that must not be registered; the message says what happened and why it may have."""

    def __init__(self, what: str, causes: list[str], run_dir: Any = None):
        self.what, self.causes, self.run_dir = what, causes, run_dir
        lines = [f"training failed: {what}", "likely causes:"] + [f"  - {c}" for c in causes]
        if run_dir is not None:
            lines.append(f"nothing was registered; the run's files stay in {run_dir} for inspection")
        super().__init__("\n".join(lines))


@dataclass
class Preflight:
    """The schedule's numbers, printed once before training, and what looks wrong in them."""

    steps_per_epoch: int
    epochs: int
    warmup_steps: int
    lr: float
    ema_decay: float | None
    ema_half_life_steps: float | None
    ema_initial_share_after_epoch1: float | None
    train_counts: dict[str, int]
    input_size: int
    smallest_box_px: float | None = None
    boxes_under_stride: float | None = None
    # The task fits in one pass (Task.one_pass): no steps, warm-up, lr or EMA to check.
    one_pass: bool = False
    warnings: list[str] = field(default_factory=list)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    def summary(self) -> str:
        if self.one_pass:
            counts = ", ".join(f"{n} {c}" for c, n in self.train_counts.items())
            return f"pre-flight: one pass over the train parts ({counts}); no epochs, optimizer or EMA"
        parts = [
            f"{self.steps_per_epoch} steps/epoch x {self.epochs} epochs = {self.total_steps} steps",
            f"warm-up {self.warmup_steps} steps to lr {self.lr:g}",
        ]
        if self.ema_decay:
            parts.append(
                f"EMA {self.ema_decay:g}: half-life {self.ema_half_life_steps:.0f} steps, "
                f"{self.ema_initial_share_after_epoch1:.0%} initial weights after epoch 1"
            )
        else:
            parts.append("no EMA")
        if self.smallest_box_px is not None:
            parts.append(
                f"smallest box {self.smallest_box_px:.1f} px at {self.input_size} px input "
                f"({self.boxes_under_stride:.0%} under the {FINEST_STRIDE} px stride)"
            )
        return "pre-flight: " + "; ".join(parts)


def preflight(
    cfg: Config,
    manifest: Manifest,
    train: list[Sample],
    steps_per_epoch: int,
    boxes_at_input: list[np.ndarray] | None = None,
) -> Preflight:
    """Measure the schedule and the training data against what a run needs to learn.

    `boxes_at_input` are a detector's training boxes [K, 4] per image, already scaled to the
    model's input (as the detector sees them).
    """
    from zerodefect.training.train import warmup_steps

    t = cfg.train
    decay = t.ema_decay or None
    half_life = math.log(0.5) / math.log(decay) if decay else None
    initial_share = None
    if decay:  # the first update copies the weights, each later one keeps decay_n of the average
        from zerodefect.training.train import ema_decay_at, ema_tau

        tau = t.ema_tau or ema_tau(decay)
        initial_share = math.prod(ema_decay_at(n, decay, tau) for n in range(2, steps_per_epoch + 1))
    from zerodefect.training.tasks import get_task

    task = get_task(cfg.task)
    counts = task.label_counts(manifest, train)
    sides: list[float] = []
    for boxes in boxes_at_input or []:
        sides.extend(np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).tolist())
    pre = Preflight(
        steps_per_epoch=steps_per_epoch,
        epochs=t.epochs,
        warmup_steps=warmup_steps(cfg, steps_per_epoch),
        lr=t.lr,
        ema_decay=decay,
        ema_half_life_steps=half_life,
        ema_initial_share_after_epoch1=initial_share,
        train_counts=counts,
        input_size=min(cfg.model.input_hw),
        smallest_box_px=min(sides) if sides else None,
        boxes_under_stride=float(np.mean(np.array(sides) < FINEST_STRIDE)) if sides else None,
        one_pass=task.one_pass,
    )
    pre.warnings = suspects(pre)
    return pre


def suspects(pre: Preflight) -> list[str]:
    """What in the schedule or the data commonly makes a run learn nothing, worst first."""
    out = [] if pre.one_pass else schedule_suspects(pre)
    empty = [c for c, n in pre.train_counts.items() if n == 0]
    tiny = {c: n for c, n in pre.train_counts.items() if 0 < n < TINY_CLASS}
    if empty:
        out.append(f"classes with no training examples: {', '.join(empty)}")
    if tiny:
        out.append(
            "classes with fewer than "
            f"{TINY_CLASS} training examples: " + ", ".join(f"{c} ({n})" for c, n in tiny.items())
        )
    if pre.boxes_under_stride is not None and pre.boxes_under_stride > 0.25:
        out.append(
            f"{pre.boxes_under_stride:.0%} of the boxes are under {FINEST_STRIDE} px at "
            f"{pre.input_size} px input (smallest {pre.smallest_box_px:.1f} px): raise model.input_size "
            "or tile the images"
        )
    return out


def schedule_suspects(pre: Preflight) -> list[str]:
    """The optimizer schedule's suspects (EMA, warm-up, lr, too few steps): an epoch-trained
    task's only; a one-pass fit has no schedule."""
    out = []
    share = pre.ema_initial_share_after_epoch1
    if pre.ema_decay and share is not None and share > 0.1:
        out.append(
            f"train.ema_decay {pre.ema_decay:g} against {pre.steps_per_epoch} steps per epoch: after "
            f"epoch 1 the averaged weights are still {share:.0%} the initial (random-head) ones "
            f"(half-life {pre.ema_half_life_steps:.0f} steps); lower it "
            f"(e.g. {_ema_for(pre.steps_per_epoch):g}), leave train.ema_tau to its default, or set it to null"
        )
    if pre.warmup_steps < 10 and pre.total_steps >= 20:
        out.append(
            f"warm-up of {pre.warmup_steps} steps to lr {pre.lr:g} is short; raise train.warmup_pct "
            "(or train.max_warmup_epochs)"
        )
    if pre.lr > 0.01:
        out.append(f"train.lr {pre.lr:g} is high for AdamW fine-tuning (1e-4 to 3e-3 is usual)")
    if pre.total_steps < 50:
        out.append(f"only {pre.total_steps} optimizer steps in all: more epochs, or a smaller batch_size")
    return out


def _ema_for(steps_per_epoch: int) -> float:
    """A decay whose initial weights are under 5 % after one epoch (0.95 = decay**steps)."""
    decay = math.exp(math.log(0.05) / max(steps_per_epoch, 1))
    return math.floor(decay * 1000) / 1000


def check_run(cfg: Config, result: Any, pre: Preflight, run_dir: Any = None) -> None:
    """Raise TrainingFailed when the run collapsed; return quietly when it learned.

    `result` is the FitResult of zerodefect.training.train.fit.
    """
    from zerodefect.training.tasks import get_task

    task = get_task(cfg.task)
    metric, chance = task.headline_label, task.chance
    floor = cfg.gate.floor(task.headline_metric)
    generic = [
        "labels that do not match the images: look at a few of each class",
    ]
    if result.failure:
        causes = [f"train.lr {cfg.train.lr:g} too high for this data and batch size"]
        if not cfg.train.grad_clip:
            causes.append("no gradient clipping: set train.grad_clip (e.g. 10)")
        # The pre-flight's own lr warning, when there is one, says the same as the first cause.
        raise TrainingFailed(
            result.failure, causes + [w for w in pre.warnings if not w.startswith("train.lr")], run_dir
        )
    if result.best_epoch < 0:
        raise TrainingFailed("no epoch finished", pre.warnings + generic, run_dir)
    best = result.best_score
    if best <= chance:
        raise TrainingFailed(
            f"the best val {metric} was {best:.4f} (epoch {result.best_epoch + 1}), at chance "
            f"(<= {chance:g}): the model learned nothing usable",
            pre.warnings + generic,
            run_dir,
        )
    # A one-pass fit runs one "epoch" whatever train.epochs says: it never stops early.
    stopped_early = not task.one_pass and result.epochs_run < cfg.train.epochs
    if stopped_early and result.best_epoch == 0 and best < floor:
        raise TrainingFailed(
            f"early stop with the best val {metric} {best:.4f} at epoch 1, under the gate floor "
            f"{floor:g}: every later epoch was worse",
            pre.warnings + generic,
            run_dir,
        )
