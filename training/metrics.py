"""Plant metrics for classifiers, in numpy.

A plant counts escapes (defective parts passed) and false rejects (good parts scrapped or
re-inspected). Accuracy alone hides which of the two a model trades; every report here gives
both at the operating threshold, which is calibrated on the validation split only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve


def ratio(numerator: int, denominator: int) -> float | None:
    """A rate, or None when it has no denominator: 0/0 is unknown, not a perfect 0.0."""
    return numerator / denominator if denominator else None


def rate_notes(defective: int, good: int) -> list[str]:
    """What a reader must know before trusting the escape and false-reject rates of a set."""
    notes = []
    if not good:
        notes.append(
            "no clean parts: the false-reject rate is undefined, and an escape rate of 0 is what "
            "rejecting every part would score"
        )
    if not defective:
        notes.append("no defective parts: the escape rate is undefined")
    return notes


def binary_report(defective: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Metrics at one threshold, defect as the positive class; reject when score >= threshold.

    A rate with no denominator (no defective parts for the escape rate, no good ones for the
    false-reject rate, no rejects for precision) is None, and `notes` says why.
    """
    defective = np.asarray(defective, dtype=bool)
    reject = np.asarray(scores) >= threshold
    tp = int(np.sum(reject & defective))
    fp = int(np.sum(reject & ~defective))
    fn = int(np.sum(~reject & defective))
    tn = int(np.sum(~reject & ~defective))
    n = tp + fp + fn + tn
    precision = ratio(tp, tp + fp)
    recall = ratio(tp, tp + fn)
    both = len(np.unique(defective)) == 2
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "n": n,
        "defective": tp + fn,
        "accuracy": ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "auroc": float(roc_auc_score(defective, scores)) if both else None,
        "escape_rate": ratio(fn, tp + fn),
        "false_reject_rate": ratio(fp, fp + tn),
        "notes": rate_notes(tp + fn, fp + tn),
        "threshold": float(threshold),
        # Rows: true good, true defective; columns: passed, rejected.
        "confusion": {"labels": ["good", "defective"], "matrix": [[tn, fp], [fn, tp]]},
    }


def calibrate_threshold(defective: np.ndarray, scores: np.ndarray, target_escape_rate: float) -> float:
    """The highest threshold whose escape rate on these scores stays within the target.

    It lies halfway between the first defective score it must reject and the score just
    below it, so that no calibration score sits on the threshold and a runtime that differs in
    the fifth decimal still decides every calibration part the same way.
    """
    defective = np.asarray(defective, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    bad = np.sort(scores[defective])
    if bad.size == 0:
        raise ValueError("calibration needs defective samples")
    allowed = int(np.floor(target_escape_rate * bad.size + 1e-9))
    edge = bad[min(allowed, bad.size - 1)]
    below = scores[scores < edge]
    return float((edge + below.max()) / 2) if below.size else float(edge / 2)


def plant_report(
    defective: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    groups: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Full report: metrics at the operating threshold, at 0.5 for reference, and per group."""
    report = binary_report(defective, scores, threshold)
    reference = binary_report(defective, scores, 0.5)
    report["at_threshold_0.5"] = {
        k: reference[k] for k in ("accuracy", "precision", "recall", "f1", "escape_rate", "false_reject_rate")
    }
    report["groups"] = {}
    for key, values in (groups or {}).items():
        values = np.asarray(values).astype(str)
        report["groups"][key] = {
            str(v): _group(defective[values == v], scores[values == v], threshold)
            for v in sorted(set(values))
        }
    return report


def _group(defective: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """One group's report at the threshold, its escape count (the per-type figure a plant acts
    on) and its accuracy at 0.5."""
    group = binary_report(defective, scores, threshold)
    group["escapes"] = group["confusion"]["matrix"][1][0]
    group["accuracy_at_0.5"] = binary_report(defective, scores, 0.5)["accuracy"]
    return group


def curves(defective: np.ndarray, scores: np.ndarray) -> dict[str, np.ndarray]:
    """ROC and PR curves for plots."""
    fpr, tpr, _ = roc_curve(defective, scores)
    precision, recall, _ = precision_recall_curve(defective, scores)
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
