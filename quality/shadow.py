"""Shadow mode in the record: a challenger's verdicts, kept apart, and how they compare.

A station in shadow mode scores each part with `@challenger` too, after the line's verdict is
given; those verdicts arrive here in batches and never touch the part's own row. The comparison
is on the same parts: where the two disagree (by station and class), and, on reviewed parts,
the escapes and false rejects each model made. It is the evidence to promote on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from zerodefect.inference.wire import ShadowBatchIn
from zerodefect.problems import errors
from zerodefect.quality.deps import DB, CallingStation, Viewer
from zerodefect.quality.models import Inspection, ShadowVerdict, Station

# Review decisions that say what the part really was.
DEFECTIVE = ("confirmed", "escape")
GOOD = ("false_reject", "good")


def record_shadow(session: Session, station: Station, batch: ShadowBatchIn) -> int:
    """Store a batch in one transaction; a verdict already stored (same station, part key and
    version: a resent batch) is skipped. Returns how many were new."""
    rows = [{"station_id": station.id, **item.model_dump()} for item in batch.items]
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(ShadowVerdict).on_conflict_do_nothing(
        index_elements=["station_id", "key", "model_version"]
    )
    stored = len(session.execute(statement.returning(ShadowVerdict.id), rows).all())
    session.commit()
    return stored


@dataclass
class ShadowReport:
    """The challenger against the serving model on the parts both judged."""

    model_name: str
    challenger_version: str
    parts: int = 0
    disagreements: int = 0
    # "station / serving class -> challenger class" counts, e.g. "st-01 / good -> scratch".
    by_station: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, int] = field(default_factory=dict)
    reviewed: int = 0
    reviewed_defective: int = 0
    reviewed_good: int = 0
    serving_escapes: int = 0
    challenger_escapes: int = 0
    serving_false_rejects: int = 0
    challenger_false_rejects: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(session: Session, model_name: str, version: str) -> ShadowReport:
    """Join the challenger's shadow verdicts to the parts they shadowed, by (station, key)."""
    query = (
        select(
            Station.name,
            Inspection.verdict,
            Inspection.review_status,
            Inspection.review_label,
            ShadowVerdict.verdict,
            ShadowVerdict.defect_class,
        )
        .join(
            Inspection,
            (Inspection.station_id == ShadowVerdict.station_id) & (Inspection.key == ShadowVerdict.key),
        )
        .join(Station, Station.id == ShadowVerdict.station_id)
        .where(ShadowVerdict.model_name == model_name, ShadowVerdict.model_version == version)
    )
    report = ShadowReport(model_name, version)
    stations: Counter[str] = Counter()
    classes: Counter[str] = Counter()
    for station, serving, review, label, challenger, challenger_class in session.execute(query):
        report.parts += 1
        if serving != challenger:
            report.disagreements += 1
            stations[station] += 1
            classes[f"{serving} -> {challenger} ({challenger_class or label or '-'})"] += 1
        if review in DEFECTIVE:
            report.reviewed += 1
            report.reviewed_defective += 1
            report.serving_escapes += serving == "pass"
            report.challenger_escapes += challenger == "pass"
        elif review in GOOD:
            report.reviewed += 1
            report.reviewed_good += 1
            report.serving_false_rejects += serving == "reject"
            report.challenger_false_rejects += challenger == "reject"
    report.by_station, report.by_class = dict(stations), dict(classes)
    return report


router = APIRouter()


@router.post("/v1/shadow-verdicts", responses=errors(400, 401, 403, 413, 422))
def post_shadow_verdicts(body: ShadowBatchIn, session: DB, who: CallingStation) -> dict[str, int]:
    """A batch of a station's shadow verdicts (a challenger's, beside the line's); idempotent."""
    return {"received": len(body.items), "stored": record_shadow(session, who, body)}


@router.get("/v1/shadow-report", responses=errors(401, 403, 422))
def get_shadow_report(
    session: DB,
    _user: Viewer,
    model: Annotated[str, Query(min_length=1, max_length=200)],
    version: Annotated[str, Query(min_length=1, max_length=100)],
) -> dict[str, Any]:
    """The challenger `version` against the line's verdicts on the same parts."""
    return compare(session, model, version).as_dict()
