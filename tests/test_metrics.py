"""Plant metrics and threshold calibration on hand-made scores."""

from __future__ import annotations

import numpy as np

from zerodefect.training.metrics import binary_report, calibrate_threshold, plant_report


def test_escape_and_false_reject_rates() -> None:
    defective = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0.9, 0.8, 0.6, 0.2, 0.7, 0.3, 0.2, 0.1, 0.1, 0.0])
    r = binary_report(defective, scores, threshold=0.5)
    # Rejected: 0.9, 0.8, 0.6 (defective) and 0.7 (good). Escaped: the defective 0.2.
    assert r["confusion"]["matrix"] == [[5, 1], [1, 3]]
    assert r["escape_rate"] == 0.25 and r["false_reject_rate"] == 1 / 6
    assert r["accuracy"] == 0.8 and r["precision"] == 0.75 and r["recall"] == 0.75
    assert abs(r["auroc"] - 20.5 / 24) < 1e-12  # 6 + 6 + 5 + 3.5 pairs won of 24


def test_calibration_meets_the_escape_target_and_avoids_ties() -> None:
    rng = np.random.default_rng(0)
    defective = rng.random(400) < 0.3
    scores = np.clip(rng.normal(np.where(defective, 0.7, 0.3), 0.15), 0, 1)
    for target in (0.0, 0.05, 0.2):
        t = calibrate_threshold(defective, scores, target)
        r = binary_report(defective, scores, t)
        assert r["escape_rate"] <= target + 1e-12
        # One step higher would pass one more defect and break the target.
        bad = np.sort(scores[defective])
        allowed = int(np.floor(target * bad.size + 1e-9))
        assert np.sum(scores[defective] < t) == allowed
        assert np.min(np.abs(scores - t)) > 0


def test_groups_and_reference_point() -> None:
    defective = np.array([1, 0, 1, 0], dtype=bool)
    scores = np.array([0.9, 0.4, 0.45, 0.1])
    r = plant_report(defective, scores, 0.3, {"type": np.array(["mono", "mono", "poly", "poly"])})
    assert r["escape_rate"] == 0.0 and r["false_reject_rate"] == 0.5
    assert r["at_threshold_0.5"]["escape_rate"] == 0.5
    assert r["groups"]["type"]["mono"]["false_reject_rate"] == 1.0
    assert r["groups"]["type"]["poly"]["false_reject_rate"] == 0.0
