"""The task interface and the typed report, without training: the committed reference reports
read back into the one Report type with their keys unchanged, the gate reads that type, and
manifest boxes travel as Detections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zerodefect.inference.result import Detections
from zerodefect.training.config import GateConfig
from zerodefect.training.registry import judge
from zerodefect.training.report import Report
from zerodefect.training.tasks import TASKS, get_task

RESULTS = Path(__file__).parent.parent / "docs" / "results"


def _read(name: str) -> dict:
    return json.loads((RESULTS / name).read_text())


def test_committed_reports_keep_their_keys_through_the_typed_report() -> None:
    classifier = _read("elpv-classifier.json")
    report = Report.from_json(classifier)
    # An old classifier report has no `task`: it is read as one, and gains only that key.
    assert report.task == "classification"
    assert report.to_json() == {**classifier, "task": "classification"}
    (tn, fp), (fn, tp) = classifier["confusion"]["matrix"]
    plant = report.plant
    assert (plant.n, plant.defective, plant.good) == (654, 204, 450) == (tn + fp + fn + tp, fn + tp, tn + fp)
    assert (plant.escapes, plant.false_rejects) == (fn, fp)
    assert plant.escape_rate == pytest.approx(fn / (fn + tp))
    assert plant.thresholds == {"threshold": classifier["threshold"]}
    assert report.headline == {k: classifier[k] for k in ("accuracy", "auroc", "f1")}

    detector = _read("neu-det-detector.json")
    report = Report.from_json(detector)
    assert report.task == "detection" and report.to_json() == detector
    plant = report.plant
    assert (plant.n, plant.defective, plant.escapes) == (
        detector["images"],
        detector["defective_images"],
        detector["escapes"],
    )
    assert plant.false_reject_rate is None and plant.thresholds == detector["class_thresholds"]
    assert (
        report.metric("map50") == detector["map50"]
        and report.metric("escape_rate") == detector["escape_rate"]
    )


def test_the_gate_reads_the_typed_report_and_the_task_names_its_metrics() -> None:
    detector = Report.from_json(_read("neu-det-detector.json"))
    passed, rows = judge(detector, None, GateConfig(), 0.005)
    assert [r.metric for r in rows] == list(get_task("detection").gate_metrics)
    frr = next(r for r in rows if r.metric == "false_reject_rate")
    assert frr.ok and frr.note == "no clean parts in the split"  # NEU-DET has no clean parts
    # The same report against itself as champion, made worse on its headline: refused.
    worse = Report.from_json({**_read("neu-det-detector.json"), "map50": detector.metric("map50") - 0.1})
    passed, rows = judge(worse, detector, GateConfig(min_map50=0.0), 0.005)
    assert not passed and next(r for r in rows if r.metric == "map50").note == "worse than the champion"


def test_tasks_are_registered_by_name_and_an_unknown_one_is_named() -> None:
    assert set(TASKS) == {"classification", "detection", "anomaly"}
    assert all(get_task(name).name == name for name in TASKS)
    with pytest.raises(
        ValueError, match="unknown task 'segmentation'; known: classification, detection, anomaly"
    ):
        get_task("segmentation")


def test_manifest_boxes_travel_as_detections_and_back() -> None:
    rows = [
        {"label": "spot", "box": [1.0, 2.0, 30.0, 40.0]},
        {"label": "scratch", "box": [5.0, 5.0, 9.0, 9.5]},
    ]
    boxes = Detections.from_manifest(rows, ["scratch", "spot"])
    assert boxes.class_id.tolist() == [1, 0] and boxes.scores.tolist() == [1.0, 1.0]
    assert boxes.to_manifest(["scratch", "spot"]) == rows
    with pytest.raises(ValueError, match="unknown class 'dent'"):
        Detections.from_manifest([{"label": "dent", "box": [0, 0, 1, 1]}], ["scratch", "spot"])
