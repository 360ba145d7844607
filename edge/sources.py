"""Pull mode: frames from a video file, an image folder, an RTSP/HTTP stream or a USB camera.

Frames are judged by the same Inspector as pushed images. Camera frames are JPEG-encoded
once, and that encoding is what is hashed, scored and stored, so the record's image is exactly
the pixels the model saw.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import cv2

from zerodefect.edge.station import Inspector, PartMeta
from zerodefect.inference.imagecheck import InputError

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def iter_frames(source: str) -> Iterator[tuple[bytes, str]]:
    """Yield (encoded bytes, content type) from a folder or an OpenCV VideoCapture source."""
    folder = Path(source)
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            yield path.read_bytes(), IMAGE_SUFFIXES[path.suffix.lower()]
        return
    capture = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not capture.isOpened():
        raise ValueError(f"cannot open video source {source!r}")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
            if ok:
                yield encoded.tobytes(), "image/jpeg"
    finally:
        capture.release()


async def pull_loop(inspector: Inspector, source: str, serial_prefix: str) -> int:
    """Judge every frame of `source` in order; returns the number of frames judged."""
    frames = iter_frames(source)
    loop = asyncio.get_running_loop()
    count = 0
    while True:
        item = await loop.run_in_executor(None, next, frames, None)
        if item is None:
            log.info("source %s ended after %d frames", source, count)
            return count
        data, kind = item
        # The record keeps 100 characters of a camera name: a long folder path keeps its end.
        meta = PartMeta(
            f"{serial_prefix}-{count:06d}",
            inspector.config.station,
            camera=source[-100:],
            frame_id=str(count),
        )
        try:
            await inspector.inspect(data, kind, meta, time.perf_counter())
        except InputError as exc:
            log.error("frame %d of %s refused: %s", count, source, exc.reason)
        count += 1
