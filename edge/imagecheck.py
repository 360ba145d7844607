"""Checks on uploaded image bytes before any decoding: size, declared type, pixel count.

The pixel count is read from the PNG or JPEG header, so a decompression bomb (a small file
that declares a huge image) is refused before a single pixel is allocated.
"""

from __future__ import annotations

import struct

SUPPORTED = ("image/jpeg", "image/png")


class InputError(ValueError):
    """Bad input from a camera or client: an HTTP status and a reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sniff_type(data: bytes) -> str | None:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return None


def image_dimensions(data: bytes, kind: str) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the header is unreadable."""
    if kind == "image/png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return None
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    # JPEG: walk the markers to the first start-of-frame.
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5 : i + 9])
            return width, height
        i += 2 + length
    return None


def check_image(data: bytes, declared: str | None, max_bytes: int, max_pixels: int) -> str:
    """Validate bytes against the declared type and limits; returns the content type."""
    if not data:
        raise InputError(400, "empty image")
    if len(data) > max_bytes:
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
    size = image_dimensions(data, actual)
    if size is None or 0 in size:
        raise InputError(400, f"corrupt {actual} header")
    if size[0] * size[1] > max_pixels:
        raise InputError(413, f"image of {size[0]}x{size[1]} pixels is over the {max_pixels}-pixel limit")
    return actual
