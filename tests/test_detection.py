"""Detectors end to end on generated parts with drawn defects whose boxes are known: training,
COCO mAP, per-class thresholds, export parity with torchvision, and boxes over HTTP into the
quality record."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.datasets.augment import build_augmentations
from zerodefect.datasets.manifest import Manifest
from zerodefect.edge.app import create_app as create_edge
from zerodefect.inference.engine import Engine
from zerodefect.inference.postprocess import batched_nms
from zerodefect.inference.result import Detections
from zerodefect.training.detection import DetectionDataset, load_detection_data, predict_detections
from zerodefect.training.detection_metrics import coco_map, part_report
from zerodefect.training.export import check_detection_parity
from zerodefect.training.tasks import get_task

from .bundles import evaluate_with_cli, train_from
from .people import client_for
from .servers import record_for_station, serve
from .synthetic import make_voc_dataset
from .test_edge import post, station, wait_for


@pytest.fixture(scope="module")
def voc_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_voc_dataset(tmp_path_factory.mktemp("voc") / "parts", images=60, size=128)


@pytest.fixture(scope="module")
def trained(module_store: Path, voc_dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("detcfg")
    config = {
        "name": "tiny-detector",
        "task": "detection",
        "data": {
            "manifest": str(folder / "manifest.jsonl"),
            "source": {
                "format": "voc",
                "args": {"root": str(voc_dataset)},
                "split": {"test": 0.25, "val": 0.2},
            },
        },
        "model": {"input_size": 128, "detector": {"fpn_channels": 64, "head_convs": 2}},
        "train": {"epochs": 8, "batch_size": 8, "lr": 0.002, "warmup_pct": 0.2, "grad_clip": 10.0},
        "augment": [{"name": "HorizontalFlip", "p": 0.5}],
        "calibration": {"target_escape_rate": 0.1},
        "mlflow": {"experiment": "tests-det", "registered_model": "tiny-detector"},
    }
    return train_from(folder, config)


def test_detector_learns_and_reports_plant_numbers(trained) -> None:
    cfg, outcome = trained
    report = outcome.report.to_json()
    assert report["task"] == "detection" and outcome.report.headline["map50"] == report["map50"]
    # Dark scratches and bright spots on a plain texture: a detector that learned finds them.
    assert report["map50"] > 0.5, report["map50"]
    assert 0 <= report["map50_95"] <= report["map50"]
    assert set(report["per_class_ap"]) == {"scratch", "spot"}
    # The generated set has clean parts, so both part-level rates are defined.
    assert report["clean_images"] > 0 and report["defective_images"] > 0
    plant = outcome.report.plant
    assert (plant.n, plant.defective) == (report["images"], report["defective_images"])
    assert plant.escape_rate is not None and plant.false_reject_rate is not None
    assert plant.thresholds == report["class_thresholds"]
    assert report["val"]["escape_rate"] <= cfg.calibration.target_escape_rate
    assert report["ms_per_image_1core"] > 0
    assert any(p.endswith("pr_curves.png") for p in report["plots"])
    assert sum(p.endswith(".png") for p in report["plots"]) > 2  # sample sheets too


def test_export_parity_with_torchvision_on_generated_images(trained) -> None:
    cfg, outcome = trained
    engine = Engine.from_bundle(outcome.bundle_dir)
    meta = engine.meta
    assert meta.task == "detection" and meta.classes == ["scratch", "spot"]
    assert set(meta.class_thresholds) == {"scratch", "spot"}
    assert meta.postprocess["level_sizes"] == [256, 64, 16, 4, 1]
    assert outcome.report.data["parity"]["differing_images"] == 0
    # Independently of the run's own check: best weights in PyTorch against the shipped bundle.
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    model, _ = get_task("detection").build_model(cfg, manifest, None)
    model.load_state_dict(torch.load(outcome.run_dir / "best.pt", weights_only=False)["model"])
    images, _ = load_detection_data(manifest, manifest.split("val"), 128, cfg.model.interpolation)
    reference = predict_detections(model, images, torch.device("cpu"))
    parity = check_detection_parity(engine, images, reference)
    assert parity.ok and parity.fields["compared_detections"] > 0
    assert parity.fields["min_matched_iou"] >= 0.99 and parity.differing == 0


def test_numpy_nms_matches_torchvision() -> None:
    import torchvision

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (300, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (300, 2)).astype(np.float32)], axis=1)
    scores = rng.uniform(0, 1, 300).astype(np.float32)
    labels = rng.integers(0, 3, 300)
    ours = batched_nms(boxes, scores, labels, 0.5)
    theirs = torchvision.ops.batched_nms(
        torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(labels), 0.5
    ).numpy()
    assert np.array_equal(ours, theirs)


def test_coco_map_and_part_report() -> None:
    truths = [
        Detections.from_labels(["a"], [[10, 10, 50, 50]], ["a", "b"]),
        Detections.from_labels(["b"], [[20, 20, 80, 40]], ["a", "b"]),
        Detections.empty(),
    ]
    sizes = [(100, 100)] * 3
    perfect = [Detections(t.xyxy, np.full(len(t), 0.9, np.float32), t.class_id) for t in truths]
    scores = coco_map(truths, perfect, ["a", "b"], sizes)
    assert scores["map50"] == pytest.approx(1.0) and scores["map50_95"] == pytest.approx(1.0)
    # Shifted by 6 px the box has IoU 0.57: it counts at 0.5 and 0.55, not at stricter IoUs.
    shifted = [
        Detections(perfect[0].xyxy + 6, perfect[0].scores, perfect[0].class_id),
        perfect[1],
        perfect[2],
    ]
    worse = coco_map(truths, shifted, ["a", "b"], sizes)
    assert worse["per_class_ap"]["a"] == pytest.approx(1.0) and worse["per_class_ap50_95"][
        "a"
    ] == pytest.approx(0.2)
    # Part level: the clean image with a false alarm is a false reject; a missed part an escape.
    alarms = [
        Detections.empty(),
        perfect[1],
        Detections(np.array([[1, 1, 9, 9]], np.float32), np.array([0.8], np.float32), np.array([0])),
    ]
    plant = part_report(truths, alarms, np.array([0.5, 0.5]))
    assert plant["escapes"] == 1 and plant["escape_rate"] == 0.5
    assert plant["false_rejects"] == 1 and plant["false_reject_rate"] == 1.0


def test_box_aware_augmentation_moves_the_boxes() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    truth = Detections.from_labels(["b"], [[10, 20, 30, 60]], ["a", "b"])
    flip = build_augmentations([{"name": "HorizontalFlip", "p": 1.0}], boxes=True)
    _, target = DetectionDataset(image[None], [truth], flip)[0]
    assert target["boxes"].numpy() == pytest.approx(np.array([[70, 20, 90, 60]]), abs=1e-3)
    assert target["labels"].tolist() == [1]


def test_evaluate_cli_writes_the_detector_report(trained, tmp_path: Path) -> None:
    _, outcome = trained
    output, report = evaluate_with_cli(outcome, tmp_path / "report.json")
    for key in (
        "map50",
        "map50_95",
        "per_class_ap",
        "escape_rate",
        "false_reject_rate",
        "ms_per_image_1core",
    ):
        assert key in report
    assert report["map50"] == pytest.approx(outcome.report.headline["map50"])


def test_edge_serves_boxes_into_the_record(
    trained, module_store: Path, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    _, outcome = trained
    training_key = module_store / "keys" / "bundle-signing.pub"  # made by training on first use
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    sample = next(s for s in manifest.split("test") if len(s.boxes) == 2)
    data = manifest.resolve(sample).read_bytes()
    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        config = station(
            tmp_path,
            str(outcome.bundle_dir),
            record_url=record_url,
            store_images="all",
            trusted_keys=[str(training_key)],
        )
        with serve(create_edge(config)) as url:
            answer = post(url, data, serial="SN-D1", frame_id="d1")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["outbox"]["pending"] == 0)
        expected = Engine.from_bundle(outcome.bundle_dir).predict(
            [cv2.cvtColor(cv2.imread(str(manifest.resolve(sample))), cv2.COLOR_BGR2RGB)]
        )[0]
        assert body["verdict"] == expected.verdict
        assert len(body["defects"]) == len(expected.detections) > 0
        for defect in body["defects"]:
            x1, y1, x2, y2 = defect["box"]
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            assert defect["score"] >= outcome.report.plant.thresholds[defect["class_name"]]
        reader = client_for(record_app, record_url)
        page = reader.get("/v1/inspections", params={"limit": 10}).json()
        row = next(r for r in page["items"] if r["serial"] == "SN-D1")
        assert [d["box"] for d in row["defects"]] == [d["box"] for d in body["defects"]]
        assert reader.get(row["image_url"]).content == data
        # Reviewers see the boxes drawn on the stored image; the stored bytes stay untouched.
        overlay = reader.get(row["overlay_url"])
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
        drawn = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
        x1, y1, _, _ = (round(v) for v in row["defects"][0]["box"])
        blue, green, red = drawn[y1, x1]
        assert red > 200 and green < 50 and blue < 50
        assert reader.get("/v1/inspections/999999/overlay.png").status_code == 404


def test_export_command_recalibrates_a_detector_run(trained, tmp_path: Path) -> None:
    _, outcome = trained
    out = tmp_path / "strict"
    args = ["export", str(outcome.run_dir), "--out", str(out), "--set", "calibration.target_escape_rate=0.0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    strict, shipped = Engine.from_bundle(out).meta, Engine.from_bundle(outcome.bundle_dir).meta
    assert strict.task == "detection" and strict.target_escape_rate == 0.0 and strict.run_id == outcome.run_id
    # No escape allowed on val: no class threshold may be stricter than the shipped bundle's.
    assert all(strict.class_thresholds[c] <= shipped.class_thresholds[c] for c in strict.classes)
    manifest = str(outcome.run_dir / "manifest.jsonl")
    result = CliRunner().invoke(
        app, ["quantize", str(out), "--manifest", manifest, "--out", str(tmp_path / "q")]
    )
    assert result.exit_code == 2 and "served in fp32" in result.output


def test_a_part_is_rejected_by_any_box_over_its_own_class_threshold(trained) -> None:
    _, outcome = trained
    engine = Engine.from_bundle(outcome.bundle_dir)
    engine.meta = engine.meta.model_copy(update={"class_thresholds": {"scratch": 0.9, "spot": 0.3}})
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32)
    both = Detections(boxes, np.array([0.5, 0.35], np.float32), np.array([0, 1]))
    reject = engine.judge_detections([both])[0]
    # The scratch at 0.5 is below its 0.9; the spot at 0.35 is over its 0.3 and decides.
    assert reject.verdict == "reject" and reject.defect_class == "spot"
    assert (reject.score, reject.threshold) == (pytest.approx(0.35), 0.3)
    assert reject.detections.class_id.tolist() == [1]
    scratch_only = Detections(boxes[:1], np.array([0.5], np.float32), np.array([0]))
    passed = engine.judge_detections([scratch_only])[0]
    assert passed.verdict == "pass" and passed.defect_class is None and len(passed.detections) == 0
    assert passed.class_scores["scratch"] == pytest.approx(0.5)


def test_the_promotion_gate_compares_detectors_by_map(trained) -> None:
    _, outcome = trained
    result = CliRunner().invoke(app, ["models", "promote", "tiny-detector"])
    assert result.exit_code == 0, result.output
    assert "map50" in result.output and "tiny-detector v1 is now @champion" in result.output


def test_the_latency_command_times_every_stage(trained, tmp_path: Path) -> None:
    """`python -m zerodefect.latency` on a bundle: every stage timed for every source."""
    from zerodefect.latency import main as latency_main

    _, outcome = trained
    out = tmp_path / "latency.json"
    args = ["--bundle", str(outcome.bundle_dir), "--sides", "96", "256", "--candidates", "0", "floor"]
    assert latency_main([*args, "--images", "1", "--repeats", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["input_size"] == 128 and result["ort_threads"] == 1
    sources = [(r["side"], r["format"]) for r in result["rows"]]
    assert sources == [(96, "jpeg"), (96, "png"), (256, "jpeg"), (256, "png")]
    for row in result["rows"]:
        assert all(row["wall"][k] > 0 for k in ("decode", "resize", "run", "post_0", "post_floor"))
        assert row["cpu"]["run"] > 0 and row["wall"]["total_floor"] > row["wall"]["run"]
        assert row["over_floor"]["post_0"] == 0 and row["over_floor"]["post_0_kept"] == 0
