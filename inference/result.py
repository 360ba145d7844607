"""One result type for every task: a verdict, a score, a class, and boxes or a heatmap when
the model has them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from zerodefect.inference.wire import DefectIn

Verdict = Literal["pass", "reject"]


class NamedBox(Protocol):
    """A defect as the record keeps it (wire DefectIn, DefectOut, the ORM's Defect)."""

    class_name: str
    score: float

    @property
    def box(self) -> list[float] | None: ...


@dataclass
class Detections:
    """Boxes of one image as numpy arrays, in the image's own pixels.

    The one shape of a box in zerodefect (after supervision's `Detections`): engine output,
    manifest boxes, ground truth in metrics, defect rows, review boxes and overlays are all this
    type. `class_id` indexes the class list carried alongside (the bundle's or the manifest's);
    labels are turned into indices once, at the edges, by `from_labels` and back by `labels`.
    Ground truth and boxes drawn by a reviewer have score 1.0.

    xyxy [K, 4] float32, scores [K] float32, class_id [K] int64.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        self.xyxy = np.asarray(self.xyxy, np.float32).reshape(-1, 4)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        self.class_id = np.asarray(self.class_id, np.int64).reshape(-1)
        if not len(self.xyxy) == len(self.scores) == len(self.class_id):
            raise ValueError(
                f"detections need as many boxes, scores and class ids: "
                f"{len(self.xyxy)}, {len(self.scores)}, {len(self.class_id)}"
            )

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    @classmethod
    def from_labels(
        cls,
        labels: Sequence[str],
        xyxy: Sequence[Sequence[float]] | np.ndarray,
        classes: Sequence[str],
        scores: Sequence[float] | np.ndarray | None = None,
    ) -> Detections:
        """Boxes named by class: the form of manifests, the record and reviews.

        A label that is not in `classes` is refused with its name, never mapped to a guess.
        """
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({label for label in labels if label not in index})
        if unknown:
            raise ValueError(f"unknown class {', '.join(map(repr, unknown))}; known: {', '.join(classes)}")
        if scores is None:
            scores = np.ones(len(labels), np.float32)
        return cls(np.asarray(xyxy, np.float32), np.asarray(scores), [index[label] for label in labels])

    def labels(self, classes: Sequence[str]) -> list[str]:
        """The class name of each box."""
        return [classes[c] for c in self.class_id]

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, keep: np.ndarray | slice | list[int]) -> Detections:
        """The boxes picked by a boolean mask, index list or slice."""
        return Detections(self.xyxy[keep], self.scores[keep], self.class_id[keep])

    def scaled(self, sx: float, sy: float) -> Detections:
        """The same boxes in another image size (sx, sy: new/old width and height)."""
        return Detections(self.xyxy * np.array([sx, sy, sx, sy], np.float32), self.scores, self.class_id)

    # the record (quality/) and the wire
    @classmethod
    def from_defects(cls, defects: Sequence[NamedBox], classes: Sequence[str]) -> Detections:
        """The boxed defects of a record's part or review (a classifier's boxless rows are
        not boxes and are left out)."""
        boxed = [d for d in defects if d.box is not None]
        return cls.from_labels(
            [d.class_name for d in boxed], [d.box for d in boxed], classes, [d.score for d in boxed]
        )

    def to_defects(self, classes: Sequence[str]) -> list[DefectIn]:
        """Wire defect rows in 0.01 px and 1e-6 score steps; a box clipped to nothing at the
        image edge (no area once rounded) is no defect and is left out."""
        rows = []
        for box, score, label in zip(self.xyxy, self.scores, self.labels(classes), strict=True):
            x1, y1, x2, y2 = (round(float(v), 2) for v in box)
            if x2 > x1 and y2 > y1:
                rows.append(DefectIn(class_name=label, score=round(float(score), 6), box=[x1, y1, x2, y2]))
        return rows

    # manifests (datasets/)
    @classmethod
    def from_manifest(cls, boxes: Sequence[dict[str, Any]], classes: Sequence[str]) -> Detections:
        """A manifest row's boxes, [{"label": name, "box": [xmin, ymin, xmax, ymax]}], score 1."""
        return cls.from_labels([b["label"] for b in boxes], [b["box"] for b in boxes], classes)

    def to_manifest(self, classes: Sequence[str]) -> list[dict[str, Any]]:
        """The boxes as a manifest row stores them (the format on disk). Each coordinate is
        written as the shortest decimal that reads back to the same float32 (12.3, not
        12.300000190734863), so a manifest read and written again is unchanged."""
        return [
            {"label": label, "box": [float(str(v)) for v in xyxy]}
            for label, xyxy in zip(self.labels(classes), self.xyxy, strict=True)
        ]


@dataclass
class InspectionResult:
    """The judgement of one part. `score` is the defect score compared with `threshold`."""

    verdict: Verdict
    score: float
    threshold: float
    defect_class: str | None
    class_scores: dict[str, float] = field(default_factory=dict)
    detections: Detections | None = None
    heatmap: np.ndarray | None = None

    def defects(self, classes: Sequence[str]) -> list[DefectIn]:
        """The record's defect rows: a detector's boxes at or above their class thresholds,
        or a classifier's rejected class with its probability."""
        if self.detections is not None:
            return self.detections.to_defects(classes)
        if self.defect_class:
            return [
                DefectIn(class_name=self.defect_class, score=round(self.class_scores[self.defect_class], 6))
            ]
        return []
