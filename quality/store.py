"""Writing and reading the record: idempotent inserts and filtered, paged queries."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import ValidationError
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from zerodefect.apikeys import hash_key, mint_key
from zerodefect.configfile import describe
from zerodefect.inference.heatmap import decode_heatmap
from zerodefect.inference.imagecheck import InputError
from zerodefect.inference.wire import InspectionIn, LinkStateIn, to_utc
from zerodefect.quality.images import EXTENSIONS, ImageStore
from zerodefect.quality.models import Defect, Inspection, Line, Review, Station, StationLink, User, utcnow
from zerodefect.quality.schemas import DefectOut, InspectionOut, ReviewIn, ReviewOut, StationIn

# The fields of a part that go from the wire to its row, and from its row to readers, as they are.
PART_FIELDS = (
    "serial",
    "batch",
    "camera",
    "frame_id",
    "model_name",
    "model_version",
    "threshold",
    "score",
    "verdict",
    "failsafe",
    "latency_ms",
)


class RecordError(ValueError):
    """A request the record refuses, with the reason (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; every stored time is UTC.

    A time whose UTC form is outside years 1-9999 (0001-01-01T00:00+14:00) is a 422, not an
    OverflowError."""
    if value is None:
        return None
    try:
        return to_utc(value)
    except ValueError as exc:
        raise RecordError(str(exc)) from None


def add_station(session: Session, name: str, line: str | None = None) -> tuple[Station, str]:
    """Create a station and return it with its new API key (stored only as a hash)."""
    try:  # the API's rules for the command line too (PostgreSQL refused a longer name: a crash)
        StationIn(name=name, line=line)
    except ValidationError as exc:
        raise RecordError(f"station: {describe(exc)}") from None
    if session.scalar(select(Station).where(Station.name == name)) is not None:
        raise RecordError(f"station {name!r} exists", 409)
    line_row = None
    if line:
        line_row = session.scalar(select(Line).where(Line.name == line)) or Line(name=line)
    api_key = mint_key()
    station = Station(name=name, line=line_row, api_key_hash=hash_key(api_key))
    session.add(station)
    session.commit()
    return station, api_key


def rotate_station_key(session: Session, name: str) -> str:
    """Give an existing station a new API key (the old one stops working at once)."""
    station = session.scalar(select(Station).where(Station.name == name))
    if station is None:
        raise RecordError(f"unknown station {name!r}", 404)
    api_key = mint_key()
    station.api_key_hash = hash_key(api_key)
    session.commit()
    return api_key


def station_for_key(session: Session, api_key: str | None) -> Station | None:
    if not api_key:
        return None
    return session.scalar(select(Station).where(Station.api_key_hash == hash_key(api_key)))


@dataclass
class Stored:
    inspection: Inspection
    created: bool


def _same_part(row: Inspection, data: InspectionIn, image_sha: str | None, heatmap_sha: str | None) -> bool:
    """Whether a stored row is the part `data` describes: a delivery repeated by the station
    (the same fields, the same defects, the same image), not another part under the same key.

    Compared field by field rather than through a stored digest, so rows recorded before the
    check existed are compared the same way."""
    if any(getattr(row, name) != getattr(data, name) for name in PART_FIELDS):
        return False
    if as_utc(row.captured_at) != as_utc(data.captured_at) or row.image_sha256 != image_sha:
        return False
    if row.heatmap_sha256 != heatmap_sha:
        return False
    # Defects compare as the wire has them: ORM rows and DefectIn both give class_name, score, box.
    return [(d.class_name, d.score, d.box) for d in row.defects] == [
        (d.class_name, d.score, d.box) for d in data.defects
    ]


def _replay(session: Session, station: Station, part: _Checked) -> Stored | None:
    """The station's own record under this key if it is this part (an idempotent replay);
    None if the key is new for the station; a 409 if the station used it for another part."""
    existing = session.scalar(
        select(Inspection).where(Inspection.station_id == station.id, Inspection.key == part.data.key)
    )
    if existing is None:
        return None
    return _judge_replay(existing, part)


@dataclass
class _Checked:
    """A posted part with its image and heatmap decoded and checked, ready to compare or store."""

    data: InspectionIn
    raw: bytes | None
    image_sha: str | None
    heatmap: bytes | None
    heatmap_sha: str | None


def _check(data: InspectionIn, images: ImageStore) -> _Checked:
    """Decode and check a part's image and heatmap (a RecordError, 4xx, with the reason if bad)."""
    image_sha, raw = data.image_sha256, None
    if data.image_b64 is not None:
        if data.image_type is None:
            raise RecordError("image_type is required with image_b64")
        try:
            raw = base64.b64decode(data.image_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError("image_b64 is not valid base64") from exc
        sha = hashlib.sha256(raw).hexdigest()
        if image_sha and image_sha != sha:
            raise RecordError("image_sha256 does not match the image bytes")
        image_sha = sha
        try:
            images.check(raw, data.image_type)
        except InputError as exc:
            # A JSON field, so 422 (or 413 for a bomb), whatever the station would answer.
            raise RecordError(f"image_b64: {exc.reason}", 413 if exc.status == 413 else 422) from None
    heatmap = _heatmap_bytes(data.heatmap_b64)
    heatmap_sha = hashlib.sha256(heatmap).hexdigest() if heatmap is not None else None
    return _Checked(data, raw, image_sha, heatmap, heatmap_sha)


def _new_row(station: Station, part: _Checked, images: ImageStore) -> Inspection:
    """The part's new row (not yet added), its image and heatmap written to the image store."""
    values, defects = _row_values(station, part, images)
    return Inspection(**values, defects=[Defect(**d) for d in defects])


# How stale a station's last_seen_at may get while it posts: the andon's `silent` rule and fleet
# status count in minutes, and updating the station's row on every request was one more
# statement (and a row lock) per request for 50 stations posting 20 times a second.
SEEN_EVERY = timedelta(seconds=5)


def _seen(station: Station) -> None:
    """Mark the station seen now, unless it was marked within SEEN_EVERY."""
    now = utcnow()
    if station.last_seen_at is None or now - as_utc(station.last_seen_at) >= SEEN_EVERY:
        station.last_seen_at = now


def _row_values(station: Station, part: _Checked, images: ImageStore) -> tuple[dict, list[dict]]:
    """The part's row and its defects' rows as column values, its image and heatmap written to
    the image store (so the files are on disk before the row that names them commits)."""
    data = part.data
    image_path = None
    if part.raw is not None:
        _, path = images.put(part.raw, EXTENSIONS[data.image_type])
        image_path = str(path.relative_to(images.root))
    if part.heatmap is not None:
        images.put(part.heatmap, "png")
    stats = data.image_stats.model_dump() if data.image_stats else {}
    values = {
        "key": data.key,
        "station_id": station.id,
        **{name: getattr(data, name) for name in PART_FIELDS},
        "captured_at": as_utc(data.captured_at),
        "received_at": utcnow(),
        "image_sha256": part.image_sha,
        "image_path": image_path,
        "heatmap_sha256": part.heatmap_sha,
        **{f"image_{name}": stats.get(name) for name in ("brightness", "contrast", "sharpness")},
    }
    defects = [
        {
            "class_name": d.class_name,
            "score": d.score,
            **dict(zip(("x1", "y1", "x2", "y2"), d.box or [None] * 4, strict=True)),
        }
        for d in data.defects
    ]
    return values, defects


def _judge_replay(existing: Inspection, part: _Checked) -> Stored:
    """A key the station used before: the stored row if it is this part, else a 409."""
    if not _same_part(existing, part.data, part.image_sha, part.heatmap_sha):
        raise RecordError(
            f"key {part.data.key!r} is already recorded for another part of this station "
            f"(inspection {existing.id}); an idempotency key names one part only",
            409,
        )
    return Stored(existing, False)


def record_inspection(session: Session, station: Station, data: InspectionIn, images: ImageStore) -> Stored:
    """Store one result exactly once per (station, idempotency key); its image under its sha256.

    Keys belong to the station that posted them: another station using the same key writes
    its own row and never sees or blocks this one. The same key with the same part again is
    the stored row (a retry); with a different part it is a 409, never a silent success."""
    part = _check(data, images)
    replay = _replay(session, station, part)
    if replay is not None:
        return replay
    row = _new_row(station, part, images)
    _seen(station)
    session.add(row)
    try:
        session.commit()
    except IntegrityError:
        # Two deliveries of one key by this station raced; the winner is judged like a retry.
        session.rollback()
        replay = _replay(session, station, part)
        if replay is None:
            raise
        return replay
    return Stored(row, True)


@dataclass
class Outcome:
    """What became of one item of a batch: 201 stored, 200 already stored under its key (a
    replay), or the 4xx a single POST of it would have had, with the reason."""

    key: str | None
    status: int
    id: int | None = None
    detail: str | None = None


def _key_of(item: object) -> str | None:
    key = item.get("key") if isinstance(item, dict) else None
    return key[:64] if isinstance(key, str) else None


def record_batch(
    session: Session, station: Station, items: list[object], images: ImageStore
) -> list[Outcome]:
    """Store a batch of a station's results in one transaction: one outcome per item, in order.

    Why: one commit per part caps PostgreSQL at about 520 parts/s, a plant posts 1,500. Each
    item is judged as `record_inspection` judges a single post (the same checks, the same
    idempotency per (station, key)), so a bad item gets its own 4xx and its neighbours are
    stored. The station's earlier rows under the batch's keys come in one query. If another
    delivery of one of these keys commits first (a race), the new items are stored one by one
    through `record_inspection`, which judges the winner as a replay."""
    outcomes: list[Outcome | None] = [None] * len(items)
    checked: dict[int, _Checked] = {}
    for index, item in enumerate(items):
        try:
            checked[index] = _check(InspectionIn.model_validate(item), images)
        except ValidationError as exc:
            outcomes[index] = Outcome(_key_of(item), 422, detail=describe(exc))
        except RecordError as exc:
            outcomes[index] = Outcome(_key_of(item), exc.status, detail=str(exc))
    keys = {part.data.key for part in checked.values()}
    known: dict[str, Inspection] = {}
    if keys:
        known = {
            row.key: row
            for row in session.scalars(
                select(Inspection)
                .options(selectinload(Inspection.defects))
                .where(Inspection.station_id == station.id, Inspection.key.in_(keys))
            )
        }
    new: dict[int, tuple[dict, list[dict]]] = {}
    first: dict[str, int] = {}  # a new key's first item in this batch
    for index, part in checked.items():
        existing = known.get(part.data.key)
        if existing is None and part.data.key in first:  # the batch repeats one of its new keys
            values, defects = new[first[part.data.key]]
            existing = known[part.data.key] = Inspection(**values, defects=[Defect(**d) for d in defects])
        if existing is None:
            new[index] = _row_values(station, part, images)
            first[part.data.key] = index
            continue
        try:
            replay = _judge_replay(existing, part)
        except RecordError as exc:
            outcomes[index] = Outcome(part.data.key, exc.status, detail=str(exc))
            continue
        outcomes[index] = Outcome(part.data.key, 200, replay.inspection.id)
    if new:
        try:
            ids = _insert(session, list(new.values()))
            _seen(station)
            session.commit()
        except IntegrityError:
            session.rollback()
            return _one_by_one(session, station, checked, outcomes, images)
        for (index, (values, _)), row_id in zip(new.items(), ids, strict=True):
            outcomes[index] = Outcome(values["key"], 201, row_id)
    # Items repeating a new key of this batch are replays of it: their ids are known now.
    new_ids = {
        outcome.key: outcome.id for outcome in outcomes if outcome is not None and outcome.status == 201
    }
    for outcome in outcomes:
        if outcome is not None and outcome.status == 200 and outcome.id is None:
            outcome.id = new_ids[outcome.key]
    return [outcome for outcome in outcomes if outcome is not None]


def _insert(session: Session, rows: list[tuple[dict, list[dict]]]) -> list[int]:
    """Insert new rows and their defects in the session's transaction; their ids, in order.

    On PostgreSQL the ids come from the table's sequence in one query and the rows go in with
    COPY: measured on 2 cores, the ORM's unit of work and PostgreSQL parsing one INSERT per row
    (no server-side prepared statements, see quality.db) cost more CPU than the rest of the
    record together. A duplicate key fails the COPY as it fails an INSERT (IntegrityError).
    Elsewhere (SQLite) the ORM inserts them and returns the ids."""
    if session.get_bind().dialect.name != "postgresql":
        objects = [Inspection(**values, defects=[Defect(**d) for d in defects]) for values, defects in rows]
        session.add_all(objects)
        session.flush()
        return [row.id for row in objects]
    ids = session.scalars(
        text("SELECT nextval(pg_get_serial_sequence('inspections', 'id')) FROM generate_series(1, :n)"),
        {"n": len(rows)},
    ).all()
    columns = [column.name for column in Inspection.__table__.columns if column.name in rows[0][0]]
    defect_columns = ("inspection_id", "class_name", "score", "x1", "y1", "x2", "y2")
    connection = session.connection().connection.driver_connection
    try:
        with connection.cursor() as cursor:
            with cursor.copy(f"COPY inspections (id, {', '.join(columns)}) FROM STDIN") as copy:
                for row_id, (values, _) in zip(ids, rows, strict=True):
                    copy.write_row([row_id, *(values[c] for c in columns)])
            if any(defects for _, defects in rows):
                with cursor.copy(f"COPY defects ({', '.join(defect_columns)}) FROM STDIN") as copy:
                    for row_id, (_, defects) in zip(ids, rows, strict=True):
                        for d in defects:
                            copy.write_row([row_id, *(d[c] for c in defect_columns[1:])])
    except Exception as exc:
        if getattr(exc, "sqlstate", None) == "23505":  # unique_violation: a key raced in
            raise IntegrityError("COPY inspections", None, exc) from exc
        raise
    return list(ids)


def _one_by_one(
    session: Session,
    station: Station,
    checked: dict[int, _Checked],
    outcomes: list[Outcome | None],
    images: ImageStore,
) -> list[Outcome]:
    """The batch's checked items stored one per transaction (after a lost race on a key)."""
    for index, part in checked.items():
        try:
            stored = record_inspection(session, station, part.data, images)
        except RecordError as exc:
            outcomes[index] = Outcome(part.data.key, exc.status, detail=str(exc))
            continue
        outcomes[index] = Outcome(part.data.key, 201 if stored.created else 200, stored.inspection.id)
    return [outcome for outcome in outcomes if outcome is not None]


def _heatmap_bytes(heatmap_b64: str | None) -> bytes | None:
    """The posted heatmap's PNG bytes, checked to decode as one (a 4xx with the reason if not)."""
    if heatmap_b64 is None:
        return None
    try:
        raw = base64.b64decode(heatmap_b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise RecordError("heatmap_b64 is not valid base64") from exc
    try:
        decode_heatmap(raw)
    except InputError as exc:
        raise RecordError(f"heatmap_b64: {exc.reason}", 413 if exc.status == 413 else 422) from None
    return raw


def query_inspections(
    session: Session,
    station: str | None = None,
    verdict: str | None = None,
    serial: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
    batch: str | None = None,
) -> tuple[list[Inspection], int]:
    """Newest first, filtered; returns (page, total matching)."""
    query = select(Inspection).join(Station)
    if station:
        query = query.where(Station.name == station)
    if verdict:
        query = query.where(Inspection.verdict == verdict)
    if serial:
        query = query.where(Inspection.serial == serial)
    if batch:
        query = query.where(Inspection.batch == batch)
    if since:
        query = query.where(Inspection.captured_at >= as_utc(since))
    if until:
        query = query.where(Inspection.captured_at < as_utc(until))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.options(
            selectinload(Inspection.defects), selectinload(Inspection.station).selectinload(Station.line)
        )
        .order_by(Inspection.captured_at.desc(), Inspection.id.desc())
        .limit(limit)
        .offset(offset)
    ).all()
    return list(rows), total


def to_out(row: Inspection) -> InspectionOut:
    return InspectionOut(
        id=row.id,
        key=row.key,
        station=row.station.name,
        line=row.station.line.name if row.station.line else None,
        **{name: getattr(row, name) for name in PART_FIELDS},
        captured_at=as_utc(row.captured_at),
        received_at=as_utc(row.received_at),
        image_sha256=row.image_sha256,
        image_url=f"/v1/images/{row.image_sha256}" if row.image_path else None,
        overlay_url=f"/v1/inspections/{row.id}/overlay.png"
        if row.image_path and (row.heatmap_sha256 or any(d.box is not None for d in row.defects))
        else None,
        heatmap_sha256=row.heatmap_sha256,
        heatmap_url=f"/v1/images/{row.heatmap_sha256}" if row.image_path and row.heatmap_sha256 else None,
        review_status=row.review_status,
        defects=[DefectOut(class_name=d.class_name, score=d.score, box=d.box) for d in row.defects],
    )


# Which review decisions fit which line verdict.
DECISIONS = {"reject": ("confirmed", "false_reject"), "pass": ("good", "escape")}
# The reviews table's column for redrawn boxes (a VARCHAR of this length on PostgreSQL).
BOXES_JSON_MAX = Review.__table__.c.boxes_json.type.length


def add_review(session: Session, inspection_id: int, user: User, review: ReviewIn) -> Review:
    """Append a review and make it the part's current one; earlier reviews stay as history."""
    row = session.get(Inspection, inspection_id)
    if row is None:
        raise RecordError(f"no inspection {inspection_id}", 404)
    allowed = DECISIONS[row.verdict]
    if review.decision not in allowed:
        raise RecordError(f"a {row.verdict}ed part is reviewed as one of {allowed}, not {review.decision!r}")
    if review.decision == "escape" and not review.label:
        raise RecordError("an escape needs the defect's class in `label`")
    boxes_json = Review.boxes_to_json(review.boxes)
    if boxes_json is not None and len(boxes_json) > BOXES_JSON_MAX:
        # PostgreSQL enforces the column's length (SQLite does not): a 4xx, never a 500.
        raise RecordError(
            f"the review's boxes take {len(boxes_json)} characters stored, over the {BOXES_JSON_MAX} "
            "a review keeps: send fewer boxes or shorter class names"
        )
    # Only a label the reviewer gave: a plain confirmation keeps each defect's own class.
    label = review.label
    entry = Review(
        inspection_id=row.id,
        user_id=user.id,
        decision=review.decision,
        label=label,
        boxes_json=boxes_json,
        note=review.note,
        created_at=utcnow(),
    )
    session.add(entry)
    row.review_status, row.review_label = review.decision, label
    row.reviewed_by, row.reviewed_at = user.username, entry.created_at
    session.commit()
    return entry


def review_history(session: Session, inspection_id: int) -> list[ReviewOut]:
    if session.get(Inspection, inspection_id) is None:
        raise RecordError(f"no inspection {inspection_id}", 404)
    rows = session.scalars(
        select(Review).where(Review.inspection_id == inspection_id).order_by(Review.id)
    ).all()
    return [
        ReviewOut(
            id=r.id,
            inspection_id=r.inspection_id,
            reviewer=r.user.username,
            decision=r.decision,
            label=r.label,
            boxes=r.boxes,
            note=r.note,
            created_at=as_utc(r.created_at),
        )
        for r in rows
    ]


def record_link(session: Session, station: Station, report: LinkStateIn) -> StationLink:
    """Keep a link's latest state. Reports come again until acknowledged, and may cross: one
    older than the state held (by `since`) changes nothing."""
    since = as_utc(report.since)
    row = session.scalar(
        select(StationLink).where(StationLink.station_id == station.id, StationLink.link == report.link)
    )
    if row is None:
        row = StationLink(station_id=station.id, link=report.link, up=report.up, since=since)
        session.add(row)
    elif since < as_utc(row.since):
        return row
    row.up, row.since, row.detail, row.reported_at = report.up, since, report.detail, utcnow()
    try:
        session.commit()
    except IntegrityError:  # the same link's first report, twice at once: the other one won
        session.rollback()
        return record_link(session, station, report)
    return row
