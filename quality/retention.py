"""Retention: drop the parts (rows, defects, reviews) and images captured before a cutoff.

Why batched deletes and not one DELETE: a plant writes about 130 M rows a day; one statement
over a day of them would hold its locks and grow one transaction for minutes while stations
post. Each batch here is a short transaction of at most `batch` parts found through the
captured_at index, so ingest and reviews go on between batches, on SQLite and PostgreSQL alike
(the documented equivalent of dropping a day's partition: README, "Plant rate").

An image is content-addressed and may be shared by a part that stays (the same bytes posted
twice): its file is deleted only once no remaining part names it. Files go after their rows'
commit, so a crash in between leaves an unused file, never a row without its image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, sessionmaker

from zerodefect.quality.images import ImageStore
from zerodefect.quality.models import Defect, Inspection, Review

UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
DURATION = re.compile(r"^\s*(\d{1,6})\s*([hdw])\s*$")
BATCH = 2000


def parse_age(text: str) -> timedelta:
    """'90d', '12h' or '6w' as a duration; a ValueError that says what is accepted otherwise."""
    match = DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not an age: give a positive number of hours, days or weeks, e.g. 90d")
    return int(match.group(1)) * UNITS[match.group(2)]


@dataclass
class PruneReport:
    cutoff: datetime
    parts: int = 0
    images: int = 0
    oldest: datetime | None = None
    batches: int = 0
    files_deleted: int = 0
    files_kept: list[str] = field(default_factory=list)  # still named by a part that stays


def survey(session: Session, cutoff: datetime) -> PruneReport:
    """What a prune at `cutoff` would delete: parts, parts with an image, the oldest capture."""
    old = Inspection.captured_at < cutoff
    parts, oldest = session.execute(select(func.count(), func.min(Inspection.captured_at)).where(old)).one()
    images = session.scalar(select(func.count()).where(old, Inspection.image_sha256.is_not(None)))
    return PruneReport(cutoff, parts or 0, images or 0, oldest)


def prune(
    sessions: sessionmaker[Session], images: ImageStore, cutoff: datetime, batch: int = BATCH
) -> PruneReport:
    """Delete every part captured before `cutoff`, oldest first, `batch` parts per transaction,
    with its defects and reviews, then the images and heatmaps no remaining part names."""
    with sessions() as session:
        report = survey(session, cutoff)
    while True:
        with sessions() as session:
            rows = session.execute(
                select(Inspection.id, Inspection.image_sha256, Inspection.heatmap_sha256)
                .where(Inspection.captured_at < cutoff)
                .order_by(Inspection.captured_at)
                .limit(batch)
            ).all()
            if not rows:
                break
            ids = [r.id for r in rows]
            for table in (Defect, Review):
                session.execute(delete(table).where(table.inspection_id.in_(ids)))
            session.execute(delete(Inspection).where(Inspection.id.in_(ids)))
            session.commit()
            report.batches += 1
            shas = {sha for r in rows for sha in (r.image_sha256, r.heatmap_sha256) if sha}
            if shas:
                used = set(
                    session.scalars(
                        select(Inspection.image_sha256).where(Inspection.image_sha256.in_(shas))
                    ).all()
                ) | set(
                    session.scalars(
                        select(Inspection.heatmap_sha256).where(Inspection.heatmap_sha256.in_(shas))
                    ).all()
                )
                for sha in sorted(shas):
                    if sha in used:
                        report.files_kept.append(sha)
                        continue
                    path = images.find(sha)
                    if path is not None:
                        path.unlink(missing_ok=True)
                        report.files_deleted += 1
    return report
