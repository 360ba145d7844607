"""The detector's numpy post-processing gives torchvision's detections, also when an early model
passes thousands of candidates over the score floor (the case that made it slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from zerodefect.inference.postprocess import batched_nms, detections_from_dense, nms
from zerodefect.models.detector import build_detector


def random_boxes(rng: np.random.Generator, n: int, grid: bool) -> tuple[np.ndarray, np.ndarray]:
    """n boxes over a 320 px image; on an 8 px grid, many IoUs fall exactly on a threshold and
    many scores tie, as clipped boxes and quantised scores do."""
    xy = rng.uniform(0, 320, (n, 2)).astype(np.float32)
    wh = rng.uniform(0, 60, (n, 2)).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    if grid:
        xy, wh, scores = np.round(xy / 8) * 8, np.round(wh / 8) * 8, np.round(scores, 1).astype(np.float32)
    return np.concatenate([xy, xy + wh], axis=1), scores


@pytest.mark.parametrize("grid", [False, True])
def test_nms_of_thousands_of_candidates_matches_torchvision(grid: bool) -> None:
    rng = np.random.default_rng(int(grid))
    for n in (3000, 700, 5):
        boxes, scores = random_boxes(rng, n, grid)
        labels = rng.integers(0, 6, n)
        tb, ts, tl = (torch.from_numpy(a) for a in (boxes, scores, labels))
        for iou in (0.6, 0.5):
            assert np.array_equal(nms(boxes, scores, iou), torchvision.ops.nms(tb, ts, iou).numpy())
            ours = batched_nms(boxes, scores, labels, iou)
            theirs = torchvision.ops.batched_nms(tb, ts, tl, iou).numpy()
            # The same boxes kept, in the same order up to tied scores (torch's sort of the
            # classes' merged keeps is not stable; real scores seldom tie, grid ones do).
            assert set(ours) == set(theirs) and np.array_equal(scores[ours], scores[theirs])
            if not grid:
                assert np.array_equal(ours, theirs)
            # Stopping each class at `limit` kept boxes gives the same first `limit`.
            for limit in (100, 7):
                assert np.array_equal(batched_nms(boxes, scores, labels, iou, limit), ours[:limit])


def test_an_iou_exactly_at_the_threshold_is_judged_as_torchvision_does() -> None:
    # IoU 60/100 is float32(0.6), a hair above 0.6: torchvision compares in double and suppresses.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 6]], np.float32)
    scores = np.array([0.9, 0.8], np.float32)
    theirs = torchvision.ops.nms(torch.from_numpy(boxes), torch.from_numpy(scores), 0.6).numpy()
    assert theirs.tolist() == [0]
    assert nms(boxes, scores, 0.6).tolist() == [0]
    assert nms(boxes, scores, 0.61).tolist() == [0, 1]


def test_an_untrained_detector_gives_torchvision_detections_from_thousands_of_candidates() -> None:
    torch.manual_seed(0)
    model, _ = build_detector([f"c{i}" for i in range(6)], 128, pretrained=None)
    model.eval()
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (2, 128, 128, 3), dtype=np.uint8))
    with torch.no_grad():
        boxes, scores = (t.numpy() for t in model(images))
    reference = model.detect(images)
    post = model.postprocess_params()
    for i, ref in enumerate(reference):
        # An untrained FCOS head scores every point near 0.07: all over the 0.05 floor.
        assert (scores[i] > post["score_thresh"]).sum() == scores[i].size > 2000
        det = detections_from_dense(
            boxes[i],
            scores[i],
            model.level_sizes,
            post["score_thresh"],
            post["nms_thresh"],
            post["topk_candidates"],
            post["detections_per_img"],
        )
        assert len(det) == post["detections_per_img"]
        assert np.array_equal(det.xyxy, ref["boxes"].numpy())
        assert np.array_equal(det.scores, ref["scores"].numpy())
        assert np.array_equal(det.class_id, ref["labels"].numpy())
