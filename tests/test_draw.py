"""The one box drawer (inference/draw.py): the record's overlays and training's sample sheets."""

from __future__ import annotations

import numpy as np

from zerodefect.inference.draw import draw_detections, place_label
from zerodefect.inference.result import Detections


def test_sample_sheet_labels_never_overlap() -> None:
    taken: list[tuple[int, int, int, int]] = []
    # Five detections stacked on the same spot: each label finds its own place.
    for _ in range(5):
        taken.append(place_label((60, 14), (50, 50, 90, 90), taken, (400, 400)))
    for i, a in enumerate(taken):
        for b in taken[i + 1 :]:
            assert a[2] <= b[0] or a[0] >= b[2] or a[3] <= b[1] or a[1] >= b[3], (a, b)
    assert all(r[1] >= 0 and r[3] <= 400 for r in taken)


def test_boxes_are_drawn_over_their_labels_and_truth_boxes_bare() -> None:
    red = (0, 0, 230)
    # A box at the top edge: its label cannot go above it and lands on its top-left corner.
    det = Detections.from_labels(["crack"], [[2, 1, 40, 30]], ["good", "crack"], [0.87])
    canvas = draw_detections(np.zeros((64, 64, 3), np.uint8), det, ["good", "crack"], red, thickness=1)
    assert tuple(canvas[1, 2]) == red and tuple(canvas[30, 40]) == red  # both corners: the box wins
    assert (canvas == 255).all(axis=2).sum() > 20  # the label's white background is there
    bare = draw_detections(np.zeros((64, 64, 3), np.uint8), det, None, red, thickness=1)
    assert tuple(bare[1, 2]) == red and not (bare == 255).all(axis=2).any()  # no label drawn
    # Boxes scale with an enlarged canvas.
    big = draw_detections(np.zeros((128, 128, 3), np.uint8), det, None, red, thickness=1, scale=2)
    assert tuple(big[60, 80]) == red and tuple(big[30, 40]) != red
