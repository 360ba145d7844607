"""The station-to-record wire contract: one judged part as the station posts it.

Both sides import this module: the record validates what it receives with it, and the station
builds every payload with it and validates it before the part enters its outbox, so a part the
record would refuse fails its request at once (a 422 or 500 naming the field), never later in
the forwarder as a part parked dead. No torch, no FastAPI, no database here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

# Control characters (NUL included: PostgreSQL refuses it in text) and lone surrogates (not
# UTF-8, so no database or JSON encoder takes them) have no place in a serial or a name.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The longest heatmap_b64: a PNG of the largest heatmap the record takes (inference.heatmap),
# incompressible noise included. With the largest image the station sends (8 MB, 10.7 MB in
# base64) a part stays under the record's 16 MB body limit.
MAX_HEATMAP_B64 = 3 * 1024 * 1024
# Parts come from cameras installed this century; a station's clock may run up to a day ahead.
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)
# The serial of a part whose code the station could not read from its frame (edge.codes):
# UNREAD-<first 8 hex of the image's sha256>; the record's andon counts them (unread_rate).
UNREAD_PREFIX = "UNREAD-"
# The name of a station's link to the line (LinkStateIn): plc, mqtt...
LINK_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"


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
CaptureTime = Annotated[AwareDatetime, AfterValidator(check_captured_at)]


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


class ImageStatsIn(BaseModel):
    """What the camera saw, in three numbers the record watches for drift (quality.drift): a
    failing light moves the brightness, a dirty lens or a lost focus the contrast and sharpness,
    often before the model's scores do. Computed at the station (inference.imagestats)."""

    model_config = ConfigDict(allow_inf_nan=False, extra="forbid")

    brightness: float = Field(ge=0, le=255, description="Mean grey level, 0-255")
    contrast: float = Field(ge=0, le=255, description="Standard deviation of the grey levels")
    sharpness: float = Field(ge=0, le=2e6, description="Variance of the Laplacian (downscaled grey)")


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
    image_stats: ImageStatsIn | None = None
    heatmap_b64: str | None = Field(
        default=None,
        max_length=MAX_HEATMAP_B64,
        description="An anomaly model's heatmap, for parts whose image is sent: an 8-bit grayscale PNG "
        "(base64) at the model's input size, 0 = good, 128 = the threshold, 255 = far over it",
    )

    @model_validator(mode="after")
    def _heatmap_with_image(self) -> InspectionIn:
        # The heatmap is drawn over its image: without the image it is nothing to a reviewer.
        if self.heatmap_b64 is not None and self.image_b64 is None:
            raise ValueError("heatmap_b64 needs the image (image_b64) it was computed on")
        return self


class LinkStateIn(BaseModel):
    """A station's link to the line changed state (its PLC, its MQTT broker): the record raises
    an andon alert for a link that stays down (quality.andon `link_down`). The station reports
    each change, and again until the record has it; `since` is when the state began, so a report
    that arrives late or twice names the same outage."""

    model_config = ConfigDict(extra="forbid")

    link: str = Field(pattern=LINK_PATTERN, description="Which link: plc, mqtt...")
    up: bool
    since: CaptureTime
    detail: Text = Field(default="", max_length=300, description="The protocol and the last error")


class ShadowVerdictIn(BaseModel):
    """A challenger's verdict on a part the serving model judged (shadow mode): recorded apart
    from the part's own verdict, which it never changes; `key` is the part's idempotency key."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    key: str = Field(min_length=8, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")
    model_name: Text = Field(min_length=1, max_length=200)
    model_version: Text = Field(min_length=1, max_length=100)
    verdict: Literal["pass", "reject"]
    score: float | None = None
    defect_class: Text | None = Field(default=None, max_length=100)


class ShadowBatchIn(BaseModel):
    """Shadow verdicts from one station, sent in batches (one request per batch, not per part)."""

    model_config = ConfigDict(extra="forbid")

    items: list[ShadowVerdictIn] = Field(min_length=1, max_length=500)


class StationStatusIn(BaseModel):
    """A station's periodic report to the record, for `zerodefect fleet status`: what it serves
    and how far behind its outbox is (parts the record has not received yet)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model_name: Text = Field(min_length=1, max_length=200)
    model_version: Text = Field(min_length=1, max_length=100)
    shadow_version: Text | None = Field(default=None, max_length=100)
    outbox_pending: int = Field(ge=0)
    outbox_dead: int = Field(ge=0)
    # How often the station reports: the record calls it stale after a few missed reports.
    every_seconds: float = Field(gt=0, le=86_400)
