"""ROC, PR and confusion-matrix plots as PNG files (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plots(folder: Path, curves: dict[str, np.ndarray], report: dict[str, Any], title: str) -> list[Path]:
    """Write roc.png, pr.png and confusion.png into `folder`; returns the paths."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(curves["fpr"], curves["tpr"], label=f"AUROC {report['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
    ax.scatter(
        [report["false_reject_rate"]],
        [1 - report["escape_rate"]],
        color="red",
        zorder=3,
        label=f"operating point (t={report['threshold']:.3f})",
    )
    ax.set(xlabel="false-reject rate", ylabel="1 - escape rate", title=f"ROC: {title}")
    ax.legend(loc="lower right")
    paths.append(folder / "roc.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(curves["recall"], curves["precision"])
    ax.scatter([report["recall"]], [report["precision"]], color="red", zorder=3, label="operating point")
    ax.set(xlabel="recall (defects caught)", ylabel="precision", title=f"PR: {title}", ylim=(0, 1.02))
    ax.legend(loc="lower left")
    paths.append(folder / "pr.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    matrix = np.array(report["confusion"]["matrix"])
    labels = report["confusion"]["labels"]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(
            j,
            i,
            str(v),
            ha="center",
            va="center",
            color="white" if v > matrix.max() / 2 else "black",
        )
    ax.set_xticks(range(2), ["passed", "rejected"])
    ax.set_yticks(range(len(labels)), labels)
    ax.set(title=f"Confusion at t={report['threshold']:.3f}", xlabel="verdict", ylabel="truth")
    paths.append(folder / "confusion.png")
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths
