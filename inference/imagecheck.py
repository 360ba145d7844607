"""Checks on image bytes before any pixel is decoded, shared by the station and the record.

A decompression bomb is a small file that declares a huge image. The size must come from a
real decoder's reading of the header, never from a parser of our own: a hand-written JPEG
walker once took a 0xFF fill byte for a marker and read a fake 1x1 size while OpenCV decoded
20000x20000. Pillow's `Image.open` reads only the header (lazily, nothing is decoded) with the
same marker rules as libjpeg and libpng, so its size is what the decoder will allocate; OpenCV
then decodes, and `decode_checked` refuses any image whose decoded shape differs from that
header. Only JPEG and PNG are opened at all: WebP, TIFF and the rest are refused by their
signature before any library looks at them (Pillow's WebP reader allocates the canvas on open).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import JpegImagePlugin, PngImagePlugin

from zerodefect.inference.preprocess import ImageDecodeError, decode_image

# What stations accept and the record stores, with Pillow's header reader for each. The
# readers are called directly, not through Image.open: no other format is ever tried, and the
# size is checked here against our limit instead of Pillow's process-wide one.
SUPPORTED = {"image/jpeg": JpegImagePlugin.jpeg_factory, "image/png": PngImagePlugin.PngImageFile}
# 25 MP: a 5472x4560 industrial sensor; a decoded RGB image of this size is 75 MB.
MAX_PIXELS = 25_000_000

SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class InputError(ValueError):
    """Bad input from a camera or client: an HTTP status and a reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sniff_type(data: bytes) -> str | None:
    """The image type the bytes' signature names (what OpenCV would decode them as), or None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for magic, kind in SIGNATURES if data.startswith(magic)), None)


def check_image(
    data: bytes, declared: str | None, max_bytes: int | None, max_pixels: int
) -> tuple[str, tuple[int, int]]:
    """Validate bytes against the declared type and the limits, reading only the header.

    Returns (content type, (width, height)); raises InputError with the status and reason.
    """
    if not data:
        raise InputError(400, "empty image")
    if max_bytes is not None and len(data) > max_bytes:
        raise InputError(413, f"image of {len(data)} bytes is over the {max_bytes}-byte limit")
    declared = (declared or "").split(";")[0].strip().lower()
    if declared not in SUPPORTED:
        raise InputError(
            415, f"unsupported content type {declared or 'none'!r}; send image/jpeg or image/png"
        )
    actual = sniff_type(data)
    if actual is None:
        raise InputError(400, f"not a {declared} image (unrecognised content)")
    if actual != declared:
        raise InputError(415, f"content is {actual} but was declared {declared}")
    try:
        with SUPPORTED[actual](io.BytesIO(data)) as image:  # the header only, nothing decoded
            width, height = image.size
            if actual == "image/png":
                # Every chunk's length and CRC, without inflating a byte: OpenCV's PNG reader
                # allocates a chunk's declared length before reading it (a 10 kB file with one
                # forged length cost 2.3 GB), so no chunk may claim more than the file holds.
                image.verify()
    except Exception as exc:  # untrusted bytes: whatever the header reader trips on is bad input
        raise InputError(400, f"corrupt {actual} header ({exc or type(exc).__name__})") from None
    if width <= 0 or height <= 0:
        raise InputError(400, f"corrupt {actual} header (size {width}x{height})")
    if width * height > max_pixels:
        raise InputError(413, f"image of {width}x{height} pixels is over the {max_pixels}-pixel limit")
    return actual, (width, height)


def decode_checked(
    data: bytes, declared: str | None, max_bytes: int | None, max_pixels: int
) -> tuple[np.ndarray, str]:
    """Check the header, decode with the station's decoder, and confirm both saw one size.

    Returns (RGB uint8 image, content type). A truncated or corrupt image is a 400.
    """
    kind, (width, height) = check_image(data, declared, max_bytes, max_pixels)
    try:
        image = decode_image(data)
    except ImageDecodeError as exc:
        raise InputError(400, f"corrupt {kind} image ({exc})") from None
    if image.shape[:2] != (height, width):
        raise InputError(
            422, f"{kind} header says {width}x{height} but decodes to {image.shape[1]}x{image.shape[0]}"
        )
    return image, kind
