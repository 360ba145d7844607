"""The quality record's HTTP contract (pydantic): what stations post and what MES/QMS read."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator


def _in_utc(value: datetime) -> datetime:
    """The time in UTC (a naive one is taken as UTC); refused if it has no UTC equivalent
    (0001-01-01T00:00+14:00 falls before year 1), so it never overflows later as a 500."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError("time is out of range in UTC") from None


# A time of the record: stored and compared in UTC.
UtcTime = Annotated[datetime, AfterValidator(_in_utc)]


class DefectIn(BaseModel):
    # JSON numbers only: Infinity or NaN would break every later read of the record.
    model_config = ConfigDict(allow_inf_nan=False)

    class_name: str = Field(min_length=1, max_length=100)
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
    serial: str = Field(min_length=1, max_length=100)
    batch: str | None = Field(default=None, max_length=100)
    camera: str | None = Field(default=None, max_length=100)
    frame_id: str | None = Field(default=None, max_length=100)
    captured_at: Annotated[AwareDatetime, AfterValidator(_in_utc)]
    model_name: str = Field(min_length=1, max_length=200)
    model_version: str = Field(min_length=1, max_length=100)
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
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=1, max_length=200)


class LoginOut(BaseModel):
    username: str
    role: str
    # Send back as header X-CSRF-Token on every state-changing request of this session.
    csrf_token: str


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=100)
    password: str = Field(min_length=12, max_length=200)  # auth.MIN_PASSWORD (ASVS 2.1.1)
    role: Literal["viewer", "reviewer", "admin"]


class ReviewIn(BaseModel):
    """A reviewer's verdict. A rejected part is `confirmed` (with `label` to relabel its class)
    or a `false_reject`; an audited passed part is `good` or an `escape` (with its class)."""

    # JSON numbers only: Infinity or NaN would break every later read of the record.
    model_config = ConfigDict(allow_inf_nan=False)

    decision: Literal["confirmed", "false_reject", "good", "escape"]
    label: str | None = Field(default=None, min_length=1, max_length=100)
    boxes: list[DefectIn] | None = Field(default=None, max_length=200)
    note: str | None = Field(default=None, max_length=1000)


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
    line: str | None = Field(default=None, max_length=100)
