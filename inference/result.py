"""One result type for every task: a verdict, a score, a class, and boxes or a heatmap when
the model has them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Verdict = Literal["pass", "reject"]


@dataclass
class Detections:
    """Boxes of one image as numpy arrays: xyxy [K, 4] pixels, scores [K], class_id [K]."""

    xyxy: np.ndarray
    scores: np.ndarray
    class_id: np.ndarray

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.scores)


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

    def to_json(self, class_names: list[str] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verdict": self.verdict,
            "score": round(float(self.score), 6),
            "threshold": self.threshold,
            "defect_class": self.defect_class,
            "class_scores": {k: round(float(v), 6) for k, v in self.class_scores.items()},
        }
        if self.detections is not None:
            names = class_names or []
            out["boxes"] = [
                {
                    "label": names[c] if c < len(names) else str(c),
                    "score": round(float(s), 6),
                    "box": [round(float(v), 2) for v in xyxy],
                }
                for xyxy, s, c in zip(
                    self.detections.xyxy,
                    self.detections.scores,
                    self.detections.class_id,
                    strict=True,
                )
            ]
        return out
