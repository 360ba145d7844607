"""Image decoding and resizing, shared by training, evaluation and the edge.

One function decodes and one resizes, so the pixels the model saw in training are the pixels
it sees on the line. Normalisation happens inside the exported graph, not here.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}


class ImageDecodeError(ValueError):
    """Raised when bytes or a file are not a decodable image."""


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, TIFF) to an RGB uint8 array of shape HxWx3.

    Grey images are replicated to three channels so that every model sees one layout.
    """
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else data
    if buf.size == 0:
        raise ImageDecodeError("empty image data")
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageDecodeError("not a decodable image")
    return to_rgb8(image)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """Bring a decoded OpenCV image (grey, BGR, BGRA; 8 or 16 bit) to RGB uint8."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    if image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.shape[2] == 1:
        return cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    raise ImageDecodeError(f"unsupported channel count {image.shape[2]}")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file to RGB uint8; raises ImageDecodeError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageDecodeError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        raise ImageDecodeError(f"{path}: {exc}") from exc


def resize(image: np.ndarray, size: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    """Resize an HxWx3 image to (height, width) exactly as the bundle describes."""
    height, width = size
    if image.shape[0] == height and image.shape[1] == width:
        return image
    return cv2.resize(image, (width, height), interpolation=INTERPOLATIONS[interpolation])
