"""Closing the loop: reviewed parts become training data.

Each reviewed part with a stored image becomes one manifest row labelled by its newest review:
a false reject or an audited good part is the good class; a confirmed defect keeps (or takes
the relabelled) class; an escape found in the audit is the class the reviewer gave. For a task
whose predictions are boxes (its inference head says so), a defective row carries the
reviewer's redrawn boxes, else the boxes the model found when the reviewer confirmed them, and
is labelled with its boxes' classes; a clean row has no label (such manifests name no good
class); a defect without boxes has no place in that training and is skipped (and counted).
Boxes are kept in 0.01 px steps, the wire's. `zerodefect train CONFIG --extra-data MANIFEST`
then trains on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.inference.heads import HEADS
from zerodefect.inference.result import Detections, NamedBox
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
    if task not in HEADS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(HEADS)}")
    boxed = HEADS[task].boxes
    good = None if boxed else good_class
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
    part_boxes = []  # each sample's (box labels, 0.01 px boxes), until the classes are known
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
        boxes, names = Detections.empty(), []
        if boxed and not clean:
            if drawn is not None:
                boxes, names = boxes_of(drawn.boxes or [])
            elif decision == "confirmed":  # the model's boxes, under the reviewer's class if relabelled
                boxes, names = boxes_of(row.defects, row.review_label)
            if not len(boxes):
                skipped["escape without boxes"] += 1
                continue
        # Labelled with its boxes' classes, or its reviewed class when it has none.
        labels = (
            sorted(set(boxes.labels(names))) if len(boxes) else ([] if clean and good is None else [label])
        )
        part_boxes.append((boxes.labels(names), boxes.xyxy.round(2)))
        samples.append(
            Sample(
                path=str(path.resolve()),
                labels=labels,
                split="train",
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
    found = sorted({name for s in samples for name in s.labels} - {good})
    classes = [good, *found] if good else found
    for sample, (box_labels, xyxy) in zip(samples, part_boxes, strict=True):
        sample.boxes = Detections.from_labels(box_labels, xyxy, classes)
    manifest = Manifest(task, classes, samples, Path("/"), good, "reviews")
    return ReviewExport(manifest, {k: v for k, v in skipped.items() if v})


def boxes_of(defects: Sequence[NamedBox], relabel: str | None = None) -> tuple[Detections, list[str]]:
    """A part's boxed defects over their own class names, all under `relabel` if given (a
    reviewer who renamed the defect)."""
    names = sorted({d.class_name for d in defects} | ({relabel} if relabel else set()))
    boxes = Detections.from_defects(defects, names)
    if relabel:
        boxes.class_id[:] = names.index(relabel)
    return boxes, names
