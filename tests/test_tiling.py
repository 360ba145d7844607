"""Tiled training and sliced inference (the SAHI idea): the tile grid, boxes back in the frame's
pixels, a seam's pieces merged into one box, and a tiled detector trained, exported with
parity, evaluated and served by a station end to end on large frames with tiny defects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from zerodefect.datasets.manifest import Manifest
from zerodefect.edge.app import create_app as create_edge
from zerodefect.inference.bundle import Tiling
from zerodefect.inference.engine import Engine
from zerodefect.inference.postprocess import above, box_iou
from zerodefect.inference.preprocess import read_image
from zerodefect.inference.result import Detections
from zerodefect.inference.tiling import cut, merge, place, windows
from zerodefect.training.config import Config
from zerodefect.training.detection import clip_to_window, predict_detections, truth_for
from zerodefect.training.tasks import get_task

from .bundles import train_from
from .servers import serve
from .synthetic import make_large_voc_dataset
from .test_edge import post, station

FRAME, TILE, EPOCHS = 128, 64, 3


def test_tiles_cover_the_frame_with_the_overlap_and_the_last_flush_with_the_edge() -> None:
    wins = windows(256, 300, Tiling(tile=128, overlap=0.2))
    # Step int(128 * 0.8) = 102: origins 0, 102, then flush with the edge (128 down, 172 across).
    assert sorted({int(x) for x in wins[:, 0]}) == [0, 102, 172]
    assert sorted({int(y) for y in wins[:, 1]}) == [0, 102, 128]
    assert np.all(wins[:, 2] - wins[:, 0] == 128) and np.all(wins[:, 3] - wins[:, 1] == 128)
    covered = np.zeros((256, 300), bool)
    for x1, y1, x2, y2 in wins:
        covered[y1:y2, x1:x2] = True
    assert covered.all()
    # A frame smaller than the tile is one view, whole; the full-frame pass adds the frame itself.
    assert windows(90, 100, Tiling(tile=128)).tolist() == [[0, 0, 100, 90]]
    full = windows(256, 256, Tiling(tile=128, overlap=0.0, full_frame=True))
    assert len(full) == 5 and full[-1].tolist() == [0, 0, 256, 256]
    # The config names what it refuses: tiles for a classifier, an overlap over a half.
    base = {"name": "t", "data": {"manifest": "m.jsonl"}, "model": {"tiling": {"tile": 320}}}
    with pytest.raises(ValueError, match="tiles are for detectors"):
        Config.model_validate(base)
    with pytest.raises(ValueError, match="overlap"):
        Config.model_validate(
            {**base, "task": "detection", "model": {"tiling": {"tile": 320, "overlap": 0.7}}}
        )
    assert Config.model_validate({**base, "task": "detection"}).model.tiling == Tiling(tile=320, overlap=0.2)


def test_boxes_go_into_a_tile_and_back_into_the_frame() -> None:
    frame = np.zeros((200, 200, 3), np.uint8)
    frame[150:160, 110:130] = 255  # a 20 x 10 px defect at (110, 150)
    window = np.array([100, 100, 200, 200])
    (tile,) = cut(frame, window[None], (50, 50), "area")  # the tile at half scale
    ys, xs = np.nonzero(tile[..., 0] > 127)
    assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (5, 25, 15, 30)
    truth = Detections(np.array([[110, 150, 130, 160], [195, 10, 230, 20]], np.float32), np.ones(2), [0, 1])
    inside = clip_to_window(truth, window, (50, 50))
    # The first box, halved, in the tile's input pixels; the second is outside the tile.
    assert inside.xyxy.tolist() == [[5, 25, 15, 30]] and inside.class_id.tolist() == [0]
    back = place(inside, window, (50, 50))
    assert back.xyxy.tolist() == [[110, 150, 130, 160]]
    # A box with under a fifth of its area inside the tile is a sliver, not a defect of it.
    edge = Detections(np.array([[90, 120, 105, 130], [60, 120, 104, 130]], np.float32), np.ones(2), [0, 0])
    kept = clip_to_window(edge, window, (100, 100))
    assert kept.xyxy.tolist() == [[0, 20, 5, 30]]  # a third inside is kept; 4 of 44 px is not


def test_a_defect_on_a_seam_is_one_box_and_neighbours_stay_apart() -> None:
    score = np.array([0.9], np.float32)
    # A spot straddling the seam x = 128: two halves in the side tiles, whole in the middle one.
    left = Detections(np.array([[120, 40, 128, 50]], np.float32), np.array([0.95], np.float32), [0])
    middle = Detections(np.array([[120, 40, 137, 50]], np.float32), score, [0])
    right = Detections(np.array([[128, 40, 137, 50]], np.float32), np.array([0.8], np.float32), [0])
    merged = merge([left, middle, right])
    assert len(merged) == 1 and merged.xyxy.tolist() == [[120, 40, 137, 50]]
    assert merged.scores.tolist() == pytest.approx([0.95])
    # Another class at the same place, and a second spot of the same tile, stay their own boxes.
    other = Detections(np.array([[121, 41, 136, 49]], np.float32), score, [1])
    two = Detections(
        np.array([[120, 40, 137, 50], [140, 40, 150, 50]], np.float32), np.array([0.9, 0.7]), [0, 0]
    )
    merged = merge([two, other, right])
    assert sorted(merged.xyxy.tolist()) == [[120, 40, 137, 50], [121, 41, 136, 49], [140, 40, 150, 50]]
    assert len(merge([two, right], limit=1)) == 1


@pytest.fixture(scope="module")
def large_frames(tmp_path_factory: pytest.TempPathFactory):
    return make_large_voc_dataset(tmp_path_factory.mktemp("frames") / "frames", images=16, size=FRAME)


@pytest.fixture(scope="module")
def tiled(module_store: Path, large_frames, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("tiledcfg")
    root, _ = large_frames
    config = {
        "name": "tiny-tiled",
        "task": "detection",
        "data": {
            "manifest": str(folder / "manifest.jsonl"),
            "source": {"format": "voc", "args": {"root": str(root)}, "split": {"test": 0.25, "val": 0.2}},
        },
        # Tiles of half the frame at the model's input: the spots keep every pixel.
        "model": {
            "input_size": TILE,
            "tiling": {"tile": TILE, "overlap": 0.25},
            "detector": {"fpn_channels": 64, "head_convs": 1},
        },
        "train": {"epochs": EPOCHS, "batch_size": 8, "lr": 0.003, "grad_clip": 10.0},
        "calibration": {"target_escape_rate": 0.1},
        "mlflow": {"experiment": "tests-tiled", "registered_model": "tiny-tiled"},
    }
    return train_from(folder, config)


def test_a_tiled_detector_trains_exports_and_scores_whole_frames(tiled) -> None:
    cfg, outcome = tiled
    meta = Engine.from_bundle(outcome.bundle_dir).meta
    assert meta.tiling == Tiling(tile=TILE, overlap=0.25) and meta.input.height == TILE
    report = outcome.report.to_json()
    assert report["parity"]["differing_images"] == 0 and report["parity"]["compared_detections"] > 0
    # Measured 0.74 here (0.65-0.85 on other seeds of the frames); the same detector on whole
    # frames at 64 px, with as many steps, reached 0.10 on one seed and learned nothing on two.
    assert report["map50"] > 0.5, report["map50"]


def _frames(outcome, split: str):
    manifest = Manifest.read(outcome.run_dir / "manifest.jsonl")
    samples = manifest.split(split)
    frames = [read_image(manifest.resolve(s)) for s in samples]
    truths = [truth_for(manifest, s, f.shape[:2]) for s, f in zip(samples, frames, strict=True)]
    return manifest, samples, frames, truths


def test_sliced_boxes_are_in_the_frames_pixels_and_match_pytorch(tiled) -> None:
    cfg, outcome = tiled
    engine = Engine.from_bundle(outcome.bundle_dir)
    manifest, samples, frames, truths = _frames(outcome, "test")
    found = engine.predictions(frames)
    # The whole sliced path against PyTorch: the training views of the same frames through the
    # best weights, placed and merged by the training side's layout.
    task = get_task("detection")
    model, _ = task.build_model(cfg, manifest, None)
    model.load_state_dict(torch.load(outcome.run_dir / "best.pt", weights_only=False)["model"])
    split = task.load_split(cfg, manifest, samples, None)
    reference = split.layout.merge(predict_detections(model, split.images, torch.device("cpu")), 100)
    thresholds = engine.class_thresholds()
    compared = 0
    for mine, ref in zip(found, reference, strict=True):
        a, b = above(mine, thresholds), above(ref, thresholds)
        assert len(a) == len(b)
        if len(b):
            assert box_iou(b.xyxy, a.xyxy).max(axis=1).min() >= 0.99
        compared += len(b)
    assert compared > 0
    # Every true spot, wherever in the frame, is found where it is (frame pixels), including
    # those no tile at the origin holds: the tiles' boxes were moved back into the frame.
    far = hits = 0
    for det, truth in zip(found, truths, strict=True):
        best = box_iou(truth.xyxy, det.xyxy).max(axis=1) if len(det) else np.zeros(len(truth))
        beyond = (truth.xyxy[:, 0] >= TILE) | (truth.xyxy[:, 1] >= TILE)
        far += int(beyond.sum())
        hits += int((best[beyond] >= 0.5).sum())
        assert np.all(det.xyxy >= 0) and np.all(det.xyxy[:, [2, 3]] <= FRAME)
    assert far > 0 and hits >= 0.8 * far, (hits, far)


def test_a_spot_on_a_tile_seam_is_reported_once(tiled, large_frames) -> None:
    _, outcome = tiled
    root, boxes = large_frames
    engine = Engine.from_bundle(outcome.bundle_dir)
    frame = read_image(root / "images" / "frame_000.png")
    seam = np.array(boxes["frame_000"][:1], np.float32)  # centred on x = 64, the edge of tiles 1 and 3
    assert seam[0, 0] < TILE < seam[0, 2]
    (result,) = engine.predict([frame])
    kept = result.detections
    on_seam = box_iou(seam, kept.xyxy)[0] > 0.1 if len(kept) else np.zeros(0, bool)
    assert on_seam.sum() == 1
    assert box_iou(seam, kept.xyxy[on_seam])[0, 0] >= 0.5


def test_the_station_serves_a_tiled_bundle(tiled, large_frames, module_store: Path, tmp_path: Path) -> None:
    _, outcome = tiled
    root, _ = large_frames
    training_key = module_store / "keys" / "bundle-signing.pub"
    path = root / "images" / "frame_000.png"
    config = station(tmp_path, str(outcome.bundle_dir), trusted_keys=[str(training_key)])
    with serve(create_edge(config)) as url:
        answer = post(url, path.read_bytes(), serial="SN-T1", frame_id="t1")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (expected,) = Engine.from_bundle(outcome.bundle_dir).predict([read_image(path)])
    assert body["verdict"] == expected.verdict == "reject"
    served = sorted(d["box"] for d in body["defects"])
    assert len(served) == len(expected.detections) > 0
    assert served == sorted([round(float(v), 2) for v in box] for box in expected.detections.xyxy)
    # Boxes in the frame's 128 px, not the 64 px input or a tile's.
    assert max(b[2] for b in served) > TILE
