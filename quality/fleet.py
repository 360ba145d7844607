"""The fleet as the record sees it: every station, what it serves, its last part, its backlog,
its links, and one word for its health.

Stations report their status (model, shadow, outbox backlog) every few seconds
(PUT /v1/station-status); the last part comes from the inspections (one index lookup per
station on ix_inspections_station_time, so it stays cheap on a record of millions of parts);
the links from the station_links reports the andon uses.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from zerodefect.inference.wire import StationStatusIn
from zerodefect.problems import errors
from zerodefect.quality.deps import DB, CallingStation, Viewer
from zerodefect.quality.models import Inspection, Station, StationLink, StationStatus
from zerodefect.quality.store import as_utc

# A station is stale after this many missed status reports.
MISSED_REPORTS = 3
# A backlog this deep means parts are not reaching the record (about a minute at 30 parts/s).
BACKLOG_WARN = 2000


class StationRow(BaseModel):
    station: str
    line: str | None
    model_name: str | None
    model_version: str | None
    shadow_version: str | None
    last_part_at: datetime | None
    last_part_model_version: str | None
    outbox_pending: int | None
    outbox_dead: int | None
    links_down: list[str]
    reported_at: datetime | None
    # ok, degraded (backlog, dead parts, a link down), stale (reports stopped), silent (never heard)
    health: str
    reasons: list[str]


def record_status(session: Session, station: Station, report: StationStatusIn) -> None:
    """Keep the station's latest report (one row per station)."""
    row = session.get(StationStatus, station.id)
    if row is None:
        row = StationStatus(station_id=station.id)
        session.add(row)
    for name, value in report.model_dump().items():
        setattr(row, name, value)
    row.reported_at = datetime.now(UTC)
    session.commit()


def fleet_status(session: Session, now: datetime | None = None) -> list[StationRow]:
    """Every station of the record, by line and name."""
    now = now or datetime.now(UTC)
    rows = []
    for station in session.scalars(select(Station).order_by(Station.name)):
        status = session.get(StationStatus, station.id)
        last = session.execute(
            select(Inspection.captured_at, Inspection.model_name, Inspection.model_version)
            .where(Inspection.station_id == station.id)
            .order_by(Inspection.captured_at.desc())
            .limit(1)
        ).first()
        down = sorted(
            session.scalars(
                select(StationLink.link).where(
                    StationLink.station_id == station.id, StationLink.up.is_(False)
                )
            )
        )
        health, reasons = _health(status, last is not None, down, now)
        rows.append(
            StationRow(
                station=station.name,
                line=station.line.name if station.line else None,
                model_name=status.model_name if status else (last.model_name if last else None),
                model_version=status.model_version if status else (last.model_version if last else None),
                shadow_version=status.shadow_version if status else None,
                last_part_at=as_utc(last.captured_at) if last else None,
                last_part_model_version=last.model_version if last else None,
                outbox_pending=status.outbox_pending if status else None,
                outbox_dead=status.outbox_dead if status else None,
                links_down=down,
                reported_at=as_utc(status.reported_at) if status else None,
                health=health,
                reasons=reasons,
            )
        )
    return sorted(rows, key=lambda r: (r.line or "", r.station))


def _health(
    status: StationStatus | None, has_parts: bool, down: list[str], now: datetime
) -> tuple[str, list[str]]:
    if status is None:
        return (
            ("stale", ["no status report (an older station, or reports off)"])
            if has_parts
            else ("silent", [])
        )
    reasons = []
    age = (now - as_utc(status.reported_at)).total_seconds()
    if age > MISSED_REPORTS * status.every_seconds:
        return "stale", [f"last status report {age:.0f} s ago (every {status.every_seconds:g} s)"]
    if status.outbox_dead:
        reasons.append(f"{status.outbox_dead} parts refused by the record (dead in the outbox)")
    if status.outbox_pending > BACKLOG_WARN:
        reasons.append(f"{status.outbox_pending} parts not yet delivered")
    reasons += [f"link {link} down" for link in down]
    return ("degraded" if reasons else "ok"), reasons


router = APIRouter()


@router.put("/v1/station-status", status_code=204, responses=errors(400, 401, 403, 413, 422))
def put_station_status(body: StationStatusIn, session: DB, who: CallingStation) -> None:
    """A station's periodic status: what it serves, its shadow, its outbox backlog."""
    record_status(session, who, body)


@router.get("/v1/fleet", response_model=list[StationRow], responses=errors(401, 403))
def get_fleet(session: DB, _user: Viewer) -> list[StationRow]:
    """Every station: model, last part, backlog, links and health."""
    return fleet_status(session)
