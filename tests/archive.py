"""An archived record to re-score: parts a line judged, stored through the record's own store
with their images, and reviewed through its own reviews. Used by tests/test_rescore.py and by
bench/rescore_bench.py (thousands of parts)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cv2
import numpy as np
from sqlalchemy.orm import Session

from zerodefect.inference.wire import DefectIn, InspectionIn
from zerodefect.quality.auth import create_user
from zerodefect.quality.images import ImageStore
from zerodefect.quality.schemas import ReviewIn
from zerodefect.quality.store import add_review, add_station, record_inspection

T0 = datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
STATIONS = (("l1-st1", "line1"), ("l2-st1", "line2"))
# What the line said and what a reviewer found, in turn: the line's class for its rejects is
# "crack"; the audit found the escapes to be "scratch".
PLAN = (
    ("pass", None),
    ("pass", "good"),
    ("pass", "escape"),
    ("reject", "confirmed"),
    ("reject", "false_reject"),
    ("reject", None),
)


@dataclass(frozen=True)
class Archived:
    id: int
    station: str
    verdict: str
    review: str | None


def archive(
    session: Session, images: ImageStore, count: int, start: datetime = T0, seed: int = 0
) -> list[Archived]:
    """`count` parts over the stations (one a minute from `start`), each with a 64x64 PNG, the
    line's verdict and review taken in turn from PLAN."""
    stations = [add_station(session, name, line)[0] for name, line in STATIONS]
    reviewer = create_user(session, "qa-archive", "correct horse battery", "reviewer")
    rng = np.random.default_rng(seed)
    parts = []
    for i in range(count):
        verdict, review = PLAN[i % len(PLAN)]
        station = stations[i % len(stations)]
        image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        png = cv2.imencode(".png", image)[1].tobytes()
        data = InspectionIn(
            key=f"archive-{seed}-{i:07d}",
            serial=f"SN{seed}-{i:07d}",
            captured_at=start + timedelta(minutes=i),
            model_name="line-model",
            model_version="1",
            threshold=0.5,
            score=0.9 if verdict == "reject" else 0.1,
            verdict=verdict,
            image_b64=base64.b64encode(png).decode(),
            image_type="image/png",
            defects=[DefectIn(class_name="crack", score=0.9)] if verdict == "reject" else [],
        )
        row = record_inspection(session, station, data, images).inspection
        if review:
            label = "scratch" if review == "escape" else None
            add_review(session, row.id, reviewer, ReviewIn(decision=review, label=label))
        parts.append(Archived(row.id, station.name, verdict, review))
    return parts
