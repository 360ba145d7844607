"""Content-addressed image storage: a file's name is its sha256, so a stored image cannot be
silently replaced, the same image is stored once, and a record's hash finds its pixels.

The record checks every image it stores and every one it draws with the station's checker
(header size from a real decoder, then a full decode), never trusting the sender: random bytes
declared as PNG, or a decompression bomb, are refused before they reach the disk or a reviewer.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from zerodefect.inference.draw import blend_heatmap, draw_detections
from zerodefect.inference.heatmap import decode_heatmap
from zerodefect.inference.imagecheck import MAX_PIXELS, decode_checked
from zerodefect.inference.result import Detections

EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}
TYPES = {ext: kind for kind, ext in EXTENSIONS.items()}


class ImageStore:
    def __init__(self, root: Path, max_pixels: int = MAX_PIXELS):
        self.root = root
        self.max_pixels = max_pixels

    def check(self, data: bytes, kind: str) -> None:
        """Decode the image as the station does; raises InputError (status and reason)."""
        decode_checked(data, kind, None, self.max_pixels)

    def path_for(self, sha256: str, ext: str) -> Path:
        return self.root / sha256[:2] / f"{sha256}.{ext}"

    def put(self, data: bytes, ext: str) -> tuple[str, Path]:
        """Store bytes under their sha256 (atomically: write, fsync, rename); returns (sha, path)."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, ext)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            # Its own temporary name per writer: two requests storing one image at once (a
            # replay racing its first delivery) each rename a whole file, never a missing one.
            tmp = path.with_suffix(f".{os.getpid()}.{secrets.token_hex(4)}.tmp")
            with tmp.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            tmp.replace(path)
        return sha, path

    def find(self, sha256: str) -> Path | None:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            return None
        matches = sorted((self.root / sha256[:2]).glob(f"{sha256}.*"))
        return matches[0] if matches else None


def draw_overlay(
    path: Path,
    det: Detections,
    classes: list[str],
    max_pixels: int = MAX_PIXELS,
    heatmap: Path | None = None,
) -> bytes:
    """PNG of a stored image with its defects' boxes and labels drawn in red, over its anomaly
    heatmap (colour-mapped, resized to the image, see `blend_heatmap`) when one is given.

    Drawn on request, never stored: the stored image stays the exact bytes the camera sent.
    Checked again before decoding (images stored by older versions were not); raises
    InputError, whose reason never names the file.
    """
    import cv2

    # The station's decoder (no EXIF rotation): boxes land where the model saw them.
    rgb, _ = decode_checked(path.read_bytes(), TYPES.get(path.suffix.lstrip(".")), None, max_pixels)
    image = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if heatmap is not None:
        # The model's input was the whole image resized (no crop): so is its heatmap back.
        blend_heatmap(image, decode_heatmap(heatmap.read_bytes()))
    size = max(image.shape[:2])
    thickness = max(1, round(size / 300))
    font = min(0.5, max(0.2, size / 800))  # legible on a 40 px crop and a 4000 px frame alike
    draw_detections(image, det, classes, (0, 0, 230), thickness, font)
    return cv2.imencode(".png", image)[1].tobytes()
