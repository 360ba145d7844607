"""Anomaly detection end to end on generated parts: PatchCore fitted on good parts only finds
planted scratches (image and pixel AUROC, PRO), is calibrated without defects, exported with
parity, and served by the station over HTTP with the heatmap's regions as the part's defects.
The metrics are checked on hand-made maps."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.edge.app import create_app as create_edge
from zerodefect.inference.engine import Engine
from zerodefect.inference.heads import AnomalyHead, AnomalyMaps
from zerodefect.training.anomaly_metrics import pixel_auroc, pro_score, threshold_for_false_rejects
from zerodefect.training.tasks import Split, get_task
from zerodefect.training.tasks.anomaly import (
    AnomalyTruth,
    check_anomaly_parity,
    good_for_training,
    load_masks,
)

from .bundles import ANOMALY_SIZE as SIZE
from .bundles import evaluate_with_cli, hand_made_anomaly_meta, train_tiny_anomaly
from .people import client_for
from .servers import record_for_station, serve
from .test_edge import post, station, wait_for


@pytest.fixture(scope="module")
def trained(module_store: Path, tmp_path_factory: pytest.TempPathFactory):
    return train_tiny_anomaly(tmp_path_factory.mktemp("anomaly"))


def test_good_only_training_finds_planted_scratches(trained) -> None:
    cfg, outcome = trained
    report = outcome.report
    data = report.to_json()
    assert data["task"] == "anomaly" and report.headline["image_auroc"] == data["image_auroc"]
    # Dark scratches on a plain texture, never seen in training: found by image and by pixel.
    assert data["image_auroc"] >= 0.95, data["image_auroc"]
    assert data["pixel_auroc"] >= 0.95, data["pixel_auroc"]
    assert data["pro"] >= 0.7, data["pro"]
    assert data["pixel_images"] == 16
    # Val has no defect: the threshold is set for the false-reject target on good parts.
    assert data["val"]["calibrated_for"] == "false_reject_rate"
    assert data["val"]["false_reject_rate"] == 0.0 and data["val"]["escape_rate"] is None
    meta = Engine.from_bundle(outcome.bundle_dir).meta
    assert meta.task == "anomaly" and meta.threshold == report.plant.thresholds["threshold"]
    assert meta.postprocess["region_class"] == "scratch" and meta.training["memory_bank"][1] == 152
    assert report.plant.escape_rate is not None and report.plant.escape_rate <= 0.25
    assert data["parity"]["decisions_equal"] and data["ms_per_image_1core"] > 0
    assert outcome.version == "1"


def reloaded(trained) -> tuple:
    """The task, the run's saved best.pt in a fresh torch model, and the decoded test split."""
    cfg, outcome = trained
    task = get_task("anomaly")
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    model, _ = task.build_model(cfg, manifest, None)
    model.load_state_dict(torch.load(outcome.run_dir / "best.pt", weights_only=False)["model"])
    return task, model, task.load_split(cfg, manifest, manifest.split("test"), None)


def test_torch_and_onnx_runtime_agree_on_scores_and_heatmaps(trained) -> None:
    """Independently of the run's own check: the saved best.pt in torch against the bundle."""
    cfg, outcome = trained
    task, model, test = reloaded(trained)
    reference = task.predict(model, test.images)
    engine = Engine.from_bundle(outcome.bundle_dir)
    tolerance = 1e-4 * engine.meta.threshold
    parity = check_anomaly_parity(engine, test.images, reference, tolerance, 10 * tolerance)
    assert parity.ok and parity.differing == 0 and parity.fields["max_heat_diff"] > 0
    # The decisions differ between good and scratched parts: parity covers both sides.
    assert 0 < (reference[0] >= engine.meta.threshold).sum() < len(test.images)


def test_calibration_uses_the_escape_target_when_val_has_defects(trained) -> None:
    cfg, outcome = trained
    task, model, split = reloaded(trained)
    strict = cfg.model_copy(
        update={"calibration": cfg.calibration.model_copy(update={"target_escape_rate": 0.0})}
    )
    calibration = task.calibrate(strict, Manifest.read(outcome.run_dir / "manifest.jsonl"), model, split)
    scores = calibration.predictions[0]
    defective = split.truth.defective
    assert calibration.val_report["calibrated_for"] == "escape_rate"
    # No escape allowed: every scratched part is at or over the threshold, halfway to the next.
    assert calibration.val_report["escape_rate"] == 0.0
    threshold = calibration.thresholds["threshold"]
    assert scores[defective].min() >= threshold > scores[scores < scores[defective].min()].max()


def test_pixel_auroc_and_pro_on_hand_made_maps() -> None:
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 5:15, 5:15] = True
    masks[1, 30:40, 30:50] = True
    masks[1, 50:55, 2:6] = True
    perfect = masks + rng.uniform(0, 0.5, masks.shape)
    assert pixel_auroc(masks, perfect) == 1.0 and pro_score(masks, perfect) == pytest.approx(1.0)
    # Two of three regions always found, one never: PRO 2/3 whatever the good pixels do.
    two = rng.uniform(0, 1, masks.shape)
    two[0, 5:15, 5:15] = two[1, 30:40, 30:50] = 2.0
    two[1, 50:55, 2:6] = -1.0
    assert pro_score(masks, two) == pytest.approx(2 / 3)
    # Half of the small square found: it weighs as much as the large region, 1.5 / 2 regions...
    half = rng.uniform(0, 1, masks.shape)
    half[0, 5:15, 5:10], half[0, 5:15, 10:15] = 2.0, -1.0
    half[1][masks[1]] = 2.0
    assert pro_score(masks, half) == pytest.approx((0.5 + 1 + 1) / 3)
    # ...and a random map overlaps each region as much as the good pixels: PRO ~ 0.3 / 2.
    noise = rng.uniform(0, 1, masks.shape)
    assert pro_score(masks, noise) == pytest.approx(0.15, abs=0.03)
    assert pixel_auroc(masks, noise) == pytest.approx(0.5, abs=0.05)
    assert pixel_auroc(np.zeros_like(masks), noise) is None and pro_score(np.zeros_like(masks), noise) is None


def test_threshold_for_a_false_reject_target() -> None:
    scores = np.arange(100, dtype=np.float64)
    # 5 % of 100 good parts may be rejected: 95..99 are, 94 passes; just above it (0.1 %), not
    # halfway to 95: every score in between would be a defect passed for nothing.
    assert threshold_for_false_rejects(scores, 0.05) == pytest.approx(94.094)
    assert np.mean(scores >= threshold_for_false_rejects(scores, 0.05)) == 0.05
    # The margin never reaches the next good score up: half the way when that is closer.
    assert threshold_for_false_rejects(np.array([100.0, 100.02]), 0.5) == pytest.approx(100.01)
    # None may: just above the highest.
    assert threshold_for_false_rejects(np.array([1.0, 2.0, 4.0]), 0.0) == pytest.approx(4.004)
    # Everything may: the lowest score.
    assert threshold_for_false_rejects(np.array([1.0, 2.0]), 1.0) == 1.0


def test_a_rejected_part_has_the_heatmap_regions_as_boxes() -> None:
    meta = hand_made_anomaly_meta(min_region_pixels=4, heat_floor=0.2)
    heat = np.full((2, 32, 32), 0.2, np.float32)
    heat[0, 2:6, 4:12] = 1.5  # a region of 32 px
    heat[0, 20:30, 20:22] = 3.0  # a region of 20 px, the peak
    heat[0, 0, 31] = 1.2  # one pixel over: too small to report
    heat[1, 10:12, 10:12] = 0.9  # under the threshold: a good part
    maps = AnomalyMaps(heat.reshape(2, -1).max(axis=1), heat, [(64, 128), (32, 32)])
    reject, good = AnomalyHead().judge(meta, maps)
    assert reject.verdict == "reject" and reject.score == 3.0 and reject.defect_class == "scratch"
    # Boxes in the original image's pixels (64 high, 128 wide: x times 4, y times 2), scored by
    # their peak on the display scale (floor 0.2 -> 0, threshold 1.0 -> 0.5, clipped at 1).
    boxes = sorted(zip(reject.detections.xyxy.tolist(), reject.detections.scores.tolist(), strict=True))
    assert boxes == [([16, 4, 48, 12], pytest.approx(1.3 / 1.6)), ([80, 40, 88, 60], 1.0)]
    assert [d.class_name for d in reject.defects(meta.classes)] == ["scratch", "scratch"]
    assert good.verdict == "pass" and len(good.detections) == 0 and good.defects(meta.classes) == []
    # The heatmap people see: the threshold at 0.5, the good floor at 0.
    assert reject.heatmap[3, 5] == pytest.approx(0.5 * (1.5 - 0.2) / 0.8) and good.heatmap[0, 0] == 0.0


def test_edge_serves_the_regions_into_the_record(
    trained, module_store: Path, data_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    _, outcome = trained
    training_key = module_store / "keys" / "bundle-signing.pub"
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    sample = next(s for s in manifest.split("test") if s.mask)
    data = manifest.resolve(sample).read_bytes()
    truth = load_masks(manifest, [sample], (SIZE, SIZE)).masks[0]
    record_app = record_for_station(monkeypatch)
    with serve(record_app) as record_url:
        config = station(
            tmp_path, str(outcome.bundle_dir), record_url=record_url, trusted_keys=[str(training_key)]
        )
        with serve(create_edge(config)) as url:
            answer = post(url, data, serial="SN-A1", frame_id="a1")
            assert answer.status_code == 200, answer.text
            body = answer.json()
            wait_for(lambda: httpx.get(f"{url}/readyz").json()["outbox"]["pending"] == 0)
        assert body["verdict"] == "reject" and body["defects"], body
        # The strongest region lies on the planted scratch.
        top = max(body["defects"], key=lambda d: d["score"])
        x1, y1, x2, y2 = (round(v) for v in top["box"])
        assert top["class_name"] == "scratch" and truth[y1:y2, x1:x2].any()
        reader = client_for(record_app, record_url)
        row = next(r for r in reader.get("/v1/inspections", params={"limit": 10}).json()["items"])
        assert row["serial"] == "SN-A1" and row["verdict"] == "reject"
        assert [d["box"] for d in row["defects"]] == [d["box"] for d in body["defects"]]


def test_evaluate_cli_writes_the_anomaly_report(trained, tmp_path: Path) -> None:
    _, outcome = trained
    output, report = evaluate_with_cli(outcome, tmp_path / "report.json")
    for key in ("image_auroc", "pixel_auroc", "pro", "escape_rate", "false_reject_rate", "threshold"):
        assert report[key] == outcome.report.data[key]
    assert "pixel_auroc" in output


def test_split_without_good_parts_is_refused(trained) -> None:
    cfg, outcome = trained
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    for s in manifest.split("val"):
        s.labels = ["scratch"]
    with pytest.raises(ValueError, match="val split has no good part"):
        get_task("anomaly").check_manifest(cfg, manifest)


def test_the_bank_takes_only_cells_the_experts_called_clean(trained) -> None:
    """With a soft-label key (ELPV's expert probability), a good cell the experts doubted
    (probability 1/3) stays out of the memory bank, as do defective ones."""
    cfg, _ = trained
    samples = [
        Sample(f"{i}.png", [label], "train", meta={"probability": p})
        for i, (label, p) in enumerate([("good", 0.0), ("good", 0.3333), ("defective", 1.0), ("good", 0.0)])
    ]
    defective = np.array([False, False, True, False])
    truth = AnomalyTruth(defective, np.zeros((4, 1, 1), bool), ~defective)
    split = Split(samples, np.zeros((4, 1, 1, 3), np.uint8), truth)
    assert good_for_training(cfg, split).tolist() == [True, True, False, True]
    soft = cfg.model_copy(update={"data": cfg.data.model_copy(update={"soft_label_key": "probability"})})
    assert good_for_training(soft, split).tolist() == [True, False, False, True]
