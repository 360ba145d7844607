"""A malformed-image corpus made by the tests themselves: bombs of each format, truncations,
wrong types, odd but valid images, random bytes. Each case names the answer it must get.

Bombs are small files that declare a huge image: a decoder trusting the header would allocate
gigabytes. They are built by writing a huge size into a tiny valid image's header (what a
decoder allocates depends on the header only), so making them costs nothing.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import cv2
import numpy as np

BOMB_SIDE = 20000  # 400 MP: 1.2 GB as decoded RGB


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    declared: str
    status: int  # what the station answers; 200 for odd but valid images
    reason: str  # a piece of the answer's detail


def _jpeg(side: int = 16, channels: int = 3) -> bytes:
    shape = (side, side, channels) if channels > 1 else (side, side)
    return cv2.imencode(".jpg", np.full(shape, 120, np.uint8))[1].tobytes()


def _png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """The JPEG with its start-of-frame declaring width x height."""
    i = 2
    while data[i + 1] not in (0xC0, 0xC2):
        i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9 :]


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def jpeg_bomb() -> bytes:
    return _with_jpeg_size(_jpeg(), BOMB_SIDE, BOMB_SIDE)


def jpeg_fill_byte_bomb() -> bytes:
    """A 20000x20000 JPEG whose fill byte (legal padding before a marker) makes a naive marker
    walker read 0xFF as a marker, take the next two bytes as its length, and land on a fake
    1x1 start-of-frame hidden inside a comment that libjpeg and Pillow skip."""
    fake_sof = bytes.fromhex("ffc0001108000100010301110002110103110100")
    comment = bytearray(0xFFFD)
    # The walker reads length 0xFEFF at offset 4 and jumps to 2 + 2 + 0xFEFF; the comment's
    # payload starts at offset 7 (FF D8, fill FF, FF FE, 2-byte length).
    at = 2 + 2 + 0xFEFF - 7
    comment[at : at + len(fake_sof)] = fake_sof
    return b"\xff\xd8\xff\xff\xfe\xff\xff" + bytes(comment) + jpeg_bomb()[2:]


def png_bomb() -> bytes:
    small = _png(np.full((16, 16, 3), 120, np.uint8))
    ihdr = struct.pack(">II", BOMB_SIDE, BOMB_SIDE) + small[24:29]
    return small[:8] + _chunk(b"IHDR", ihdr) + small[33:]


def png_chunk_length_bomb() -> bytes:
    """A valid 16x16 PNG whose pixel chunk claims 3.75 GB: OpenCV 5's PNG reader allocates a
    chunk's declared length before reading it, so this 300-byte file cost 3.9 GB to decode."""
    small = _png(np.full((16, 16, 3), 120, np.uint8))
    at = small.index(b"IDAT") - 4
    return small[:at] + struct.pack(">I", 0xF0000000) + small[at + 4 :]


def webp_bomb() -> bytes:
    """Lossless WebP declaring 16384x16384 (its maximum) with no pixel data behind it."""
    side = 16384 - 1
    vp8l = b"\x2f" + struct.pack("<I", side | side << 14) + b"\x00" * 16
    body = b"WEBP" + b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", len(body)) + body


def tiff_bomb() -> bytes:
    """Little-endian TIFF declaring 100000x100000 8-bit grey, one strip of 16 bytes."""
    entries = [
        (256, 4, 1, 100000),  # ImageWidth
        (257, 4, 1, 100000),  # ImageLength
        (258, 3, 1, 8),  # BitsPerSample
        (259, 3, 1, 1),  # Compression: none
        (262, 3, 1, 1),  # Photometric: black is zero
        (273, 4, 1, 8 + 2 + 12 * 8 + 4),  # StripOffsets: right after the IFD
        (278, 4, 1, 100000),  # RowsPerStrip
        (279, 4, 1, 16),  # StripByteCounts
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, count) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00\x00\x00\x00" + b"\x00" * 16


def bombs() -> dict[str, tuple[bytes, str]]:
    """Each kind of bomb with the type a careless or hostile client would declare."""
    return {
        "jpeg": (jpeg_bomb(), "image/jpeg"),
        "jpeg-fill-byte": (jpeg_fill_byte_bomb(), "image/jpeg"),
        "png": (png_bomb(), "image/png"),
        "png-chunk-length": (png_chunk_length_bomb(), "image/png"),
        "webp": (webp_bomb(), "image/webp"),
        "tiff": (tiff_bomb(), "image/tiff"),
    }


def corpus(seed: int = 0) -> list[Case]:
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    jpeg, png = cv2.imencode(".jpg", noise)[1].tobytes(), _png(noise)
    random_bytes = rng.integers(0, 256, 5000, dtype=np.uint8).tobytes()
    return [
        Case("jpeg bomb", jpeg_bomb(), "image/jpeg", 413, "20000x20000"),
        Case("jpeg fill-byte bomb", jpeg_fill_byte_bomb(), "image/jpeg", 413, "20000x20000"),
        Case("png bomb", png_bomb(), "image/png", 413, "20000x20000"),
        Case("png chunk length bomb", png_chunk_length_bomb(), "image/png", 400, "corrupt image/png header"),
        Case("webp bomb", webp_bomb(), "image/webp", 415, "unsupported content type"),
        Case("webp bomb declared png", webp_bomb(), "image/png", 415, "content is image/webp"),
        Case("tiff bomb", tiff_bomb(), "image/tiff", 415, "unsupported content type"),
        Case("tiff bomb declared jpeg", tiff_bomb(), "image/jpeg", 415, "content is image/tiff"),
        Case("truncated jpeg", jpeg[: len(jpeg) // 2], "image/jpeg", 400, "corrupt image/jpeg"),
        Case("jpeg cut by 2 bytes", jpeg[:-2], "image/jpeg", 400, "corrupt image/jpeg"),
        Case("truncated png", png[: len(png) // 2], "image/png", 400, "corrupt image/png"),
        Case("png header only", png[:33], "image/png", 400, "corrupt image/png"),
        Case("jpeg declared png", jpeg, "image/png", 415, "content is image/jpeg"),
        Case("png as text", png, "text/plain", 415, "unsupported content type"),
        Case("no content type", png, "", 415, "unsupported content type"),
        Case("random bytes as png", random_bytes, "image/png", 400, "not a image/png"),
        Case("png signature then noise", png[:8] + random_bytes, "image/png", 400, "corrupt image/png"),
        Case("jpeg signature then noise", b"\xff\xd8\xff" + random_bytes, "image/jpeg", 400, "corrupt"),
        Case("1x1 png", _png(np.full((1, 1, 3), 90, np.uint8)), "image/png", 200, ""),
        Case("1x1 jpeg", _jpeg(1), "image/jpeg", 200, ""),
        Case("16-bit grey png", _png(np.full((24, 24), 40000, np.uint16)), "image/png", 200, ""),
        Case("16-bit rgb png", _png(np.full((24, 24, 3), 40000, np.uint16)), "image/png", 200, ""),
        Case("grey jpeg", _jpeg(32, 1), "image/jpeg", 200, ""),
    ]
