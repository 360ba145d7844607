"""Closing the loop: reviewed parts become training data.

Each reviewed part with a stored image becomes one manifest row labelled by its newest review:
a false reject or an audited good part is the good class; a confirmed defect keeps (or takes
the relabelled) class; an escape found in the audit is the class the reviewer gave. For a task
whose predictions are boxes (its inference head says so), a defective row carries the
reviewer's redrawn boxes, else the boxes the model found when the reviewer confirmed them, and
is labelled with its boxes' classes; a clean row has no label (such manifests name no good
class); a defect without boxes has no place in that training and is skipped (and counted).
Boxes are kept in 0.01 px steps, the wire's.

For the anomaly task (its manifests carry masks, not boxes) a false reject or an audited good
part is a good part, more of what its memory bank is made of; a defect with regions the
reviewer drew gets them as its mask (the boxes filled, a binary PNG of the image's own size
written to `mask_dir`, beside the manifest); a confirmed defect without drawn regions stays a
defective part with no mask (counted in `unmasked`): its image label still counts for image
AUROC and the escape-rate calibration, but the model's own regions are not taken as the truth
its pixel metrics are measured against (that would grade the model by itself).
`zerodefect train CONFIG --extra-data MANIFEST` then trains on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from zerodefect.datasets.manifest import Manifest, Sample
from zerodefect.datasets.masks import boxes_mask
from zerodefect.inference.heads import HEADS
from zerodefect.inference.preprocess import read_image
from zerodefect.inference.result import Detections, NamedBox
from zerodefect.inference.wire import DefectIn
from zerodefect.quality.images import ImageStore
from zerodefect.quality.models import Inspection, Review
from zerodefect.quality.store import as_utc

# Tasks whose manifests mark a defect's pixels with a mask (see the module docstring).
MASKED_TASKS = ("anomaly",)


@dataclass
class ReviewExport:
    manifest: Manifest
    skipped: dict[str, int] = field(default_factory=dict)
    # Defective parts of a masked task exported without a mask (no region drawn).
    unmasked: int = 0


def manifest_from_reviews(
    session: Session,
    images: ImageStore,
    task: str = "classification",
    good_class: str = "good",
    model_name: str | None = None,
    since: datetime | None = None,
    mask_dir: Path | None = None,
) -> ReviewExport:
    """Build a manifest (split "train") from reviewed inspections; see the module docstring.
    A masked task's masks are written to `mask_dir` (required for it)."""
    if task not in HEADS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(HEADS)}")
    masked = task in MASKED_TASKS
    if masked and mask_dir is None:
        raise ValueError(f"task {task!r} exports masks: give the folder to write them to")
    boxed = HEADS[task].boxes
    unmasked = 0
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
        mask = None
        regions = [b for b in (drawn.boxes or []) if b.box is not None] if drawn is not None else []
        if masked and not clean:
            if regions:
                label = row.review_label or regions[0].class_name
                mask = write_mask(path, regions, mask_dir / f"inspection-{row.id}.png")
            else:
                unmasked += 1
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
                mask=mask,
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
    return ReviewExport(manifest, {k: v for k, v in skipped.items() if v}, unmasked)


def write_mask(image: Path, boxes: Sequence[DefectIn], out: Path) -> str:
    """The boxes filled into a binary mask PNG of the image's own size (read with the
    station's decoder, as the boxes were drawn on it) at `out`; its absolute path."""
    import cv2

    height, width = read_image(image).shape[:2]
    out.parent.mkdir(parents=True, exist_ok=True)
    mask = boxes_mask(np.array([b.box for b in boxes]), height, width)
    if not cv2.imwrite(str(out), mask):
        raise OSError(f"{out}: cannot write the mask")
    return str(out.resolve())


def boxes_of(defects: Sequence[NamedBox], relabel: str | None = None) -> tuple[Detections, list[str]]:
    """A part's boxed defects over their own class names, all under `relabel` if given (a
    reviewer who renamed the defect)."""
    names = sorted({d.class_name for d in defects} | ({relabel} if relabel else set()))
    boxes = Detections.from_defects(defects, names)
    if relabel:
        boxes.class_id[:] = names.index(relabel)
    return boxes, names
