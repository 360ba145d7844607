"""Closing the loop: reviewed parts become training data.

Each reviewed part with a stored image becomes one manifest row labelled by its newest review:
a false reject or an audited good part is the good class; a confirmed defect keeps (or takes
the relabelled) class; an escape found in the audit is the class the reviewer gave. For a
detector, a row carries the reviewer's redrawn boxes, else the boxes the model found when the
reviewer confirmed them; an escape without drawn boxes has no place in detector training and is
skipped (and counted). `zerodefect train CONFIG --extra-data MANIFEST` then trains on them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from zerodefect.datasets.manifest import Box, Manifest, Sample
from zerodefect.quality.images import ImageStore
from zerodefect.quality.models import Inspection, Review
from zerodefect.quality.store import as_utc


@dataclass
class ReviewExport:
    manifest: Manifest
    skipped: dict[str, int] = field(default_factory=dict)


def manifest_from_reviews(
    session: Session,
    images: ImageStore,
    task: str = "classification",
    good_class: str = "good",
    model_name: str | None = None,
    since: datetime | None = None,
) -> ReviewExport:
    """Build a manifest (split "train") from reviewed inspections; see the module docstring."""
    query = (
        select(Inspection)
        .where(Inspection.review_status.is_not(None))
        .options(selectinload(Inspection.defects), selectinload(Inspection.station))
        .order_by(Inspection.id)
    )
    if model_name:
        query = query.where(Inspection.model_name == model_name)
    if since:
        query = query.where(Inspection.reviewed_at >= as_utc(since))
    samples, skipped = [], {"no stored image": 0, "escape without boxes": 0, "defect without a class": 0}
    for row in session.scalars(query):
        path = images.find(row.image_sha256) if row.image_sha256 else None
        if path is None:
            skipped["no stored image"] += 1
            continue
        # The newest review that drew boxes: a later relabel without drawing keeps them.
        drawn = session.scalars(
            select(Review)
            .where(Review.inspection_id == row.id, Review.boxes_json.is_not(None))
            .order_by(Review.id.desc())
            .limit(1)
        ).first()
        decision = row.review_status
        clean = decision in ("false_reject", "good")
        label = (
            good_class
            if clean
            else (row.review_label or (row.defects[0].class_name if row.defects else None))
        )
        if label is None:  # a fail-safe reject confirmed without saying what the defect is
            skipped["defect without a class"] += 1
            continue
        boxes: list[Box] = []
        if task == "detection" and not clean:
            if drawn is not None:
                boxes = [
                    Box(str(b[0]), *map(float, b[1:5])) for b in json.loads(drawn.boxes_json) if len(b) == 5
                ]
            elif decision == "confirmed":  # the model's boxes, under the reviewer's class if relabelled
                boxes = [
                    Box(row.review_label or d.class_name, d.x1, d.y1, d.x2, d.y2)
                    for d in row.defects
                    if d.x1 is not None
                ]
            if not boxes:
                skipped["escape without boxes"] += 1
                continue
        labels = sorted({b.label for b in boxes}) if task == "detection" else [label]
        samples.append(
            Sample(
                path=str(path.resolve()),
                labels=[] if task == "detection" and clean else labels,
                split="train",
                boxes=boxes,
                meta={
                    "inspection_id": row.id,
                    "serial": row.serial,
                    "station": row.station.name,
                    "model_version": row.model_version,
                    "review": decision,
                    "reviewed_by": row.reviewed_by,
                },
            )
        )
    if task == "detection":
        classes = sorted({b.label for s in samples for b in s.boxes})
        manifest = Manifest("detection", classes, samples, Path("/"), None, "reviews")
    else:
        found = sorted({s.labels[0] for s in samples} - {good_class})
        manifest = Manifest("classification", [good_class, *found], samples, Path("/"), good_class, "reviews")
    return ReviewExport(manifest, {k: v for k, v in skipped.items() if v})
