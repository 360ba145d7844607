"""The part's id read from its own frame: a DataMatrix, QR or 1-D code in a region of interest.

A serial typed or guessed by the line is weak traceability; the code printed or lasered on the
part is the part's own. zxing-cpp reads it: on a small region of interest and the configured
formats it costs a fraction of a millisecond, against tens of milliseconds for a whole frame and
every format, so the station reads only where the code is and only what the line prints.

A frame whose code cannot be read (none found, two different ones, or text the record cannot
take as a serial) is `unread`: the station then rejects the part or passes it on to the model's
verdict under the serial `UNREAD-<first 8 hex of the image's sha256>`, which the record's andon
counts (the `unread_rate` rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
import zxingcpp
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zerodefect.inference.wire import UNREAD_PREFIX, check_text

# The record's limit on a serial (inference.wire / edge.station.TEXT_LIMITS).
MAX_SERIAL = 100


class RegionOfInterest(BaseModel):
    """Where the code is on the frame: fractions of its width/height, or pixels."""

    model_config = ConfigDict(extra="forbid")

    unit: Literal["fraction", "pixel"] = "fraction"
    x: float = Field(default=0.0, ge=0)
    y: float = Field(default=0.0, ge=0)
    width: float = Field(default=1.0, gt=0)
    height: float = Field(default=1.0, gt=0)

    @model_validator(mode="after")
    def _inside_the_frame(self) -> RegionOfInterest:
        if self.unit == "fraction" and (
            self.x + self.width > 1.0 + 1e-9 or self.y + self.height > 1.0 + 1e-9
        ):
            raise ValueError("a fractional region must lie inside the frame: x + width and y + height <= 1")
        if self.unit == "pixel" and not all(
            float(v).is_integer() for v in (self.x, self.y, self.width, self.height)
        ):
            raise ValueError("a pixel region takes whole pixels")
        return self

    def box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1) in pixels of a frame of this size, clipped to it (may be empty)."""
        if self.unit == "fraction":
            x0, y0 = round(self.x * width), round(self.y * height)
            x1, y1 = round((self.x + self.width) * width), round((self.y + self.height) * height)
        else:
            x0, y0 = int(self.x), int(self.y)
            x1, y1 = int(self.x + self.width), int(self.y + self.height)
        return min(x0, width), min(y0, height), min(x1, width), min(y1, height)


class CodesConfig(BaseModel):
    """The station config's `codes:` section: read the part's id from the frame."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    # zxing-cpp's format names (DataMatrix, QRCode, MicroQRCode, Code128, EAN13...): only these
    # are searched, which is both faster and safer than all of them.
    formats: list[str] = Field(default_factory=lambda: ["DataMatrix", "QRCode"], min_length=1)
    roi: RegionOfInterest = Field(default_factory=RegionOfInterest)
    # What an unread code does to the part: `reject` it, or `pass` it on to the model's verdict
    # (under the serial UNREAD-<sha8>).
    unread: Literal["reject", "pass"] = "reject"

    @field_validator("formats")
    @classmethod
    def _known_formats(cls, formats: list[str]) -> list[str]:
        for name in formats:
            try:
                zxingcpp.barcode_format_from_str(name)
            except ValueError:
                raise ValueError(
                    f"unknown code format {name!r} (zxing-cpp names: DataMatrix, QRCode, Code128...)"
                ) from None
        return formats


@dataclass(frozen=True)
class CodeRead:
    """What the reader found: the text (None when unread), its format, and why it is unread."""

    text: str | None
    format: str | None = None
    reason: str | None = None


def unread_serial(image_sha256: str) -> str:
    """The serial of a part whose code could not be read: stable for the same frame."""
    return f"{UNREAD_PREFIX}{image_sha256[:8]}"


class CodeReader:
    """Reads one code per frame in the region of interest. Thread-safe (no state per call), so
    it runs in the station's executor next to the image decoding, never on the event loop."""

    def __init__(self, config: CodesConfig):
        self.config = config
        self.formats = zxingcpp.barcode_formats_from_str(",".join(config.formats))

    def read(self, image: np.ndarray) -> CodeRead:
        """The code in the region of interest of an RGB (or grey) frame."""
        height, width = image.shape[:2]
        x0, y0, x1, y1 = self.config.roi.box(width, height)
        if x1 <= x0 or y1 <= y0:
            return CodeRead(None, reason=f"the region of interest is outside the {width}x{height} frame")
        region = image[y0:y1, x0:x1]
        if region.ndim == 3:
            region = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY)
        found = zxingcpp.read_barcodes(np.ascontiguousarray(region), formats=self.formats)
        texts = {code.text: code for code in found if code.valid}
        if not texts:
            return CodeRead(None, reason="no code found in the region of interest")
        if len(texts) > 1:
            return CodeRead(None, reason=f"{len(texts)} different codes in the region of interest")
        text, code = next(iter(texts.items()))
        fmt = code.format.name
        if not text or len(text) > MAX_SERIAL:
            return CodeRead(
                None, fmt, f"code text of {len(text)} characters; a serial takes 1 to {MAX_SERIAL}"
            )
        try:
            check_text(text)
        except ValueError as exc:
            return CodeRead(None, fmt, f"code text is not usable as a serial: {exc}")
        return CodeRead(text, fmt)
