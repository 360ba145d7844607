"""The quality record's HTTP contract (pydantic): what people post and what MES/QMS read.

What stations post (InspectionIn, DefectIn) is the wire contract in
`zerodefect.inference.wire`, shared with the station so both sides check a part alike.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from zerodefect.inference.wire import DefectIn, Text, check_text, to_utc

# A note may have lines and tabs.
NOTE_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
NoteText = Annotated[str, AfterValidator(lambda v: check_text(v, NOTE_CONTROL))]

# A time of the record: stored and compared in UTC.
UtcTime = Annotated[datetime, AfterValidator(to_utc)]


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
    # The stored image with the defect boxes (and the heatmap, unless ?heatmap=0) drawn on it.
    overlay_url: str | None = None
    # An anomaly model's heatmap: 8-bit grayscale PNG at the model's input size, 128 = threshold.
    heatmap_sha256: str | None = None
    heatmap_url: str | None = None
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


# Parts per POST /v1/inspections/batch: a forwarder's batch (edge.config record_batch_size, at
# most this) in one request and one transaction.
MAX_BATCH_ITEMS = 1000


class InspectionBatchIn(BaseModel):
    """A station's results in one request. Each item is an InspectionIn, checked on its own, so
    one bad item is refused alone (its outcome says why) and never refuses its neighbours."""

    items: list[Any] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class BatchItemOut(BaseModel):
    """One item's outcome: 201 stored, 200 already stored under its key, or a 4xx with `detail`
    (what a single POST of it would have answered)."""

    key: str | None
    status: int
    id: int | None = None
    detail: str | None = None


class InspectionBatchOut(BaseModel):
    items: list[BatchItemOut]
    created: int
    replayed: int
    refused: int
