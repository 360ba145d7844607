"""The engine judges through the head of its bundle's task, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zerodefect.inference.bundle import BundleError, update_meta
from zerodefect.inference.engine import Engine
from zerodefect.inference.heads import HEADS, ClassificationHead

from .bundles import SIGNING_KEY


@pytest.fixture
def classifier(bundles: dict[str, Path]) -> Path:
    return bundles["reject"]


def test_a_classifier_bundle_is_judged_by_the_classification_head(classifier: Path) -> None:
    engine = Engine.from_bundle(classifier)
    assert isinstance(engine.head, ClassificationHead) and HEADS["classification"] is engine.head
    images = np.random.default_rng(1).integers(0, 255, (3, 40, 50, 3), dtype=np.uint8)
    results = engine.predict(list(images))
    probabilities = engine.probabilities(np.stack([engine.prepare(im) for im in images]))
    # Threshold 0.0: every part is rejected, with 1 - P(good) as its score and the top defect class.
    assert [r.verdict for r in results] == ["reject"] * 3 and [r.defect_class for r in results] == [
        "crack"
    ] * 3
    np.testing.assert_allclose([r.score for r in results], 1.0 - probabilities[:, 0], rtol=1e-6)
    # The detector's terms are refused with what the model is, never an AttributeError.
    with pytest.raises(BundleError, match="is a classification model: it has no DetectionHead"):
        engine.class_thresholds()


def test_a_task_without_a_head_is_refused_by_name(classifier: Path, tmp_path: Path, monkeypatch) -> None:
    """An install whose registry lacks a bundle's task (an older station) names what it has."""
    import shutil

    from zerodefect.inference.heads import HEADS

    monkeypatch.delitem(HEADS, "anomaly")
    folder = shutil.copytree(classifier, tmp_path / "anomaly")
    update_meta(folder, SIGNING_KEY, task="anomaly")
    with pytest.raises(
        BundleError, match="no inference head for task 'anomaly'; known: classification, detection"
    ):
        Engine.from_bundle(folder)
