"""The anomaly report's heatmap sheet: the best, worst and borderline test parts, each as the
image, its heatmap over it, and its true mask beside the heatmap's regions over the threshold.

AUROC says how well the scores rank; the sheet says why. The best parts show what the model
calls normal and what it finds; the worst (the most confident escapes and false rejects) show
what it misses or invents, which is where more good parts or a different input size help; the
borderline parts show how close the line runs to the threshold. The heatmap is drawn on the
display scale the review app uses (AnomalyHead.display: good-part floor 0, threshold 0.5), so a
colour means the same here as at the line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zerodefect.inference.bundle import BundleMeta
from zerodefect.inference.heads import AnomalyHead

GROUPS = ("best", "worst", "borderline")
# Each part's panels: the image, the display-scale heatmap over it, the true mask (green) and
# the heatmap's regions at or over the threshold (red) over it.
PANELS = ("image", "heatmap", "mask and regions")
# Inches per panel and dots per inch: the sheet's pixel size follows from the parts shown.
PANEL_INCHES, ROW_INCHES, TITLE_INCHES, DPI = 1.8, 2.0, 0.6, 80


@dataclass
class HeatmapSheet:
    """The sheet's file, the test-part indices of each group, and how many panels it drew."""

    path: Path
    picks: dict[str, list[int]]
    panels: int


def _alternate(first: list[int], second: list[int], count: int) -> list[int]:
    """Up to `count` indices taken in turn from two ranked lists (the rest of the longer one
    when the other runs out): both kinds of part get shown when both exist."""
    out: list[int] = []
    a, b = list(first), list(second)
    while len(out) < count and (a or b):
        for source in (a, b):
            if source and len(out) < count:
                out.append(source.pop(0))
    return out


def pick_parts(
    defective: np.ndarray, scores: np.ndarray, threshold: float, per_group: int = 3
) -> dict[str, list[int]]:
    """Which parts the sheet shows, by their margin on the right side of the threshold.

    best: the most confident correct verdicts, caught defects (highest score) in turn with
    passed good parts (lowest); worst: the most confident wrong ones, escapes (lowest score) in
    turn with false rejects (highest); borderline: of the others, the scores closest to the
    threshold. A group is short (or empty: no escape and no false reject) when there are not
    enough parts of its kind."""
    defective = np.asarray(defective, bool)
    scores = np.asarray(scores, np.float64)
    rejected = scores >= threshold
    correct = rejected == defective
    # How far on its verdict's right side each part is (negative: on the wrong side).
    margin = np.where(defective, scores - threshold, threshold - scores)
    order = np.argsort(-margin, kind="stable")  # most confident right first

    def ranked(mask: np.ndarray, reverse: bool = False) -> list[int]:
        chosen = [int(i) for i in order if mask[i]]
        return chosen[::-1] if reverse else chosen

    best = _alternate(ranked(correct & defective), ranked(correct & ~defective), per_group)
    worst = _alternate(ranked(~correct & defective, True), ranked(~correct & ~defective, True), per_group)
    shown = set(best) | set(worst)
    closest = np.argsort(np.abs(scores - threshold), kind="stable")
    borderline = [int(i) for i in closest if int(i) not in shown][:per_group]
    return {"best": best, "worst": worst, "borderline": borderline}


def _kind(defective: bool, rejected: bool) -> str:
    if defective:
        return "defect caught" if rejected else "escape"
    return "false reject" if rejected else "good passed"


def save_heatmap_sheet(
    path: Path,
    meta: BundleMeta,
    image_at: Callable[[int], np.ndarray],
    heatmaps: np.ndarray,
    masks: np.ndarray,
    defective: np.ndarray,
    scores: np.ndarray,
    names: Sequence[str],
    per_group: int = 3,
) -> HeatmapSheet:
    """Draw the picked parts into one PNG at `path`: a block of columns per group (image,
    heatmap overlay, mask and regions), one row per part.

    `image_at(i)` gives test part i as the model saw it (RGB at the input size: only the shown
    parts are decoded); `heatmaps` are the bundle's [N, H, W] outputs in threshold units and
    `masks` the true masks at the same size (all False for good parts)."""
    from zerodefect.training.plots import _pyplot

    plt = _pyplot()
    threshold = meta.threshold
    picks = pick_parts(defective, scores, threshold, per_group)
    rows, cols = max(per_group, 1), len(GROUPS) * len(PANELS)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(cols * PANEL_INCHES, rows * ROW_INCHES + TITLE_INCHES),
        dpi=DPI,
        squeeze=False,
    )
    for ax in axes.flat:
        ax.set_axis_off()
    head = AnomalyHead()
    panels = 0
    for g, group in enumerate(GROUPS):
        left = g * len(PANELS)
        if not picks[group]:
            axes[0, left + 1].text(0.5, 0.5, f"{group}: none", ha="center", va="center", fontsize=9)
        for r, i in enumerate(picks[group]):
            image, heat = image_at(i), head.display(meta, heatmaps[i])
            kind = _kind(bool(defective[i]), bool(scores[i] >= threshold))
            image_ax, heat_ax, mask_ax = axes[r, left : left + len(PANELS)]
            image_ax.imshow(image)
            # The path's tail: file names alone repeat across folders (KolektorSDD's train/ and val/).
            image_ax.set_title(f"{group}: {names[i][-26:]}", fontsize=7)
            heat_ax.imshow(image)
            heat_ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
            heat_ax.set_title(f"{kind}, score {scores[i]:.4g}", fontsize=7)
            mask_ax.imshow(image)
            if masks[i].any():
                mask_ax.contour(masks[i], levels=[0.5], colors="lime", linewidths=1)
            if (heat >= 0.5).any():
                mask_ax.contour(heat, levels=[0.5], colors="red", linewidths=1)
            panels += len(PANELS)
    fig.suptitle(
        f"{meta.name}: best, worst and borderline test parts at threshold {threshold:.4g}\n"
        "per part: image | heatmap (display scale, threshold at 0.5) | "
        "true mask (green) and regions over the threshold (red)",
        fontsize=9,
    )
    height = rows * ROW_INCHES + TITLE_INCHES
    fig.subplots_adjust(
        left=0.01, right=0.99, bottom=0.02, top=1 - TITLE_INCHES / height, wspace=0.05, hspace=0.3
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return HeatmapSheet(path, picks, panels)


def sheet_pixels(per_group: int = 3) -> tuple[int, int]:
    """The sheet's (height, width) in pixels for `per_group` rows."""
    cols = len(GROUPS) * len(PANELS)
    height = (max(per_group, 1) * ROW_INCHES + TITLE_INCHES) * DPI
    return round(height), round(cols * PANEL_INCHES * DPI)
