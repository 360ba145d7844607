"""The quality record's HTTP contract (pydantic): what stations post and what MES/QMS read."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

# Control characters (NUL included: PostgreSQL refuses it in text) and lone surrogates (not
# UTF-8, so no database or JSON encoder takes them) have no place in a serial or a name.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# A note may have lines and tabs.
NOTE_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
# Parts come from cameras installed this century; a station's clock may run up to a day ahead.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)


def check_text(value: str, pattern: re.Pattern[str] = CONTROL) -> str:
    """Refuse control characters and lone surrogates (shared with the station's checks)."""
    bad = pattern.search(value)
    if bad:
        raise ValueError(
            f"control character U+{ord(bad.group()):04X} at position {bad.start()} is not allowed"
        )
    return value


def to_utc(value: datetime) -> datetime:
    """The time in UTC (a naive one is taken as UTC: SQLite returns them so), or ValueError if
    it has none (0001-01-01T00:00+14:00 falls before year 1), never an OverflowError later."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"time {value.isoformat()} is out of range in UTC") from None


def check_captured_at(value: datetime) -> datetime:
    """A capture time the record can store and chart: from 2000 to a day ahead of its clock.

    Parts delivered late (an outbox that waited out an outage) are fine; year 0001 at +14:00
    (no UTC form) and year 9999 (a dashboard stretched over millennia) are not."""
    utc = to_utc(value)
    if utc < EARLIEST:
        raise ValueError(f"{value.isoformat()} is before {EARLIEST:%Y-%m-%d}")
    if utc > datetime.now(UTC) + MAX_AHEAD:
        raise ValueError(f"{value.isoformat()} is more than {MAX_AHEAD} ahead of the record's clock")
    return value


Text = Annotated[str, AfterValidator(check_text)]
NoteText = Annotated[str, AfterValidator(lambda v: check_text(v, NOTE_CONTROL))]
CaptureTime = Annotated[AwareDatetime, AfterValidator(check_captured_at)]

# A time of the record: stored and compared in UTC.
UtcTime = Annotated[datetime, AfterValidator(to_utc)]


class DefectIn(BaseModel):
    # JSON numbers only: Infinity or NaN would break every later read of the record.
    model_config = ConfigDict(allow_inf_nan=False)

    class_name: Text = Field(min_length=1, max_length=100)
    score: float = Field(ge=0, le=1)
    box: list[float] | None = Field(default=None, description="[x1, y1, x2, y2] in image pixels")

    @field_validator("box")
    @classmethod
    def _box(cls, box: list[float] | None) -> list[float] | None:
        if box is not None and (len(box) != 4 or box[0] >= box[2] or box[1] >= box[3]):
            raise ValueError("box must be [x1, y1, x2, y2] with x1 < x2 and y1 < y2")
        return box


class InspectionIn(BaseModel):
    """One judged part, posted by a station (its identity comes from its API key)."""

    # JSON numbers only: Infinity or NaN would break every later read of the record.
    model_config = ConfigDict(allow_inf_nan=False)

    key: str = Field(
        min_length=8,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.:-]+$",
        description="Idempotency key: the same key is stored once",
    )
    serial: Text = Field(min_length=1, max_length=100)
    batch: Text | None = Field(default=None, max_length=100)
    camera: Text | None = Field(default=None, max_length=100)
    frame_id: Text | None = Field(default=None, max_length=100)
    captured_at: CaptureTime
    model_name: Text = Field(min_length=1, max_length=200)
    model_version: Text = Field(min_length=1, max_length=100)
    threshold: float
    score: float | None = None
    verdict: Literal["pass", "reject"]
    failsafe: bool = False
    latency_ms: float | None = Field(default=None, ge=0)
    image_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    image_b64: str | None = Field(default=None, description="The image, for flagged and sampled parts")
    image_type: Literal["image/jpeg", "image/png"] | None = None
    defects: list[DefectIn] = Field(default_factory=list, max_length=200)


class DefectOut(BaseModel):
    class_name: str
    score: float
    box: list[float] | None


class InspectionOut(BaseModel):
    id: int
    key: str
    station: str
    line: str | None
    serial: str
    batch: str | None
    camera: str | None
    frame_id: str | None
    captured_at: datetime
    received_at: datetime
    model_name: str
    model_version: str
    threshold: float
    score: float | None
    verdict: str
    failsafe: bool
    latency_ms: float | None
    image_sha256: str | None
    image_url: str | None
    # The stored image with the defect boxes drawn on it, when both exist.
    overlay_url: str | None = None
    review_status: str | None
    defects: list[DefectOut]


class InspectionPage(BaseModel):
    items: list[InspectionOut]
    total: int
    limit: int
    offset: int


class LoginIn(BaseModel):
    username: Text = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)


class LoginOut(BaseModel):
    username: str
    role: str
    # Send back as header X-CSRF-Token on every state-changing request of this session.
    csrf_token: str


class UserIn(BaseModel):
    username: Text = Field(min_length=1, max_length=100)
    password: str = Field(min_length=12, max_length=200)  # auth.MIN_PASSWORD (ASVS 2.1.1)
    role: Literal["viewer", "reviewer", "admin"]


class ReviewIn(BaseModel):
    """A reviewer's verdict. A rejected part is `confirmed` (with `label` to relabel its class)
    or a `false_reject`; an audited passed part is `good` or an `escape` (with its class)."""

    # JSON numbers only: Infinity or NaN would break every later read of the record.
    model_config = ConfigDict(allow_inf_nan=False)

    decision: Literal["confirmed", "false_reject", "good", "escape"]
    label: Text | None = Field(default=None, min_length=1, max_length=100)
    boxes: list[DefectIn] | None = Field(default=None, max_length=200)
    note: NoteText | None = Field(default=None, max_length=1000)


class ReviewOut(BaseModel):
    id: int
    inspection_id: int
    reviewer: str
    decision: str
    label: str | None
    boxes: list[DefectIn] | None
    note: str | None
    created_at: datetime


class StationIn(BaseModel):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    line: Text | None = Field(default=None, max_length=100)
