"""An anomaly heatmap as it travels from the station to the record: an 8-bit grayscale PNG.

The station sends the heatmap on the display scale ([0, 1], the threshold at 0.5, see
`heads.AnomalyHead.display`) at the model's input size; 8 bits keep it within 1/255 of the
display value, which is all a reviewer's colour map shows, at a few kB per flagged part
instead of 4 bytes a pixel. The record checks it with the image checker's header reader
before decoding (a heatmap is untrusted bytes like any image) and refuses anything but a
one-channel 8-bit PNG, so what it stores always draws.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import PngImagePlugin

from zerodefect.inference.imagecheck import InputError, check_image
from zerodefect.inference.wire import MAX_HEATMAP_B64

# The largest heatmap the record takes (a model input of 1400 x 1400, or 512 x 3900): its PNG
# is at most ~2 MB, within the wire's MAX_HEATMAP_B64 once in base64.
MAX_HEATMAP_PIXELS = 2_000_000
__all__ = ["MAX_HEATMAP_B64", "MAX_HEATMAP_PIXELS", "decode_heatmap", "encode_heatmap"]


def encode_heatmap(heatmap: np.ndarray) -> bytes:
    """PNG bytes of a display-scale heatmap [H, W] in [0, 1]: 0 -> 0, threshold 0.5 -> 128."""
    grey = np.round(np.clip(np.asarray(heatmap, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    ok, png = cv2.imencode(".png", grey)
    if not ok:
        raise ValueError(f"heatmap of shape {grey.shape} cannot be encoded as PNG")
    return png.tobytes()


def decode_heatmap(data: bytes, max_pixels: int = MAX_HEATMAP_PIXELS) -> np.ndarray:
    """The heatmap on the display scale (float32 [H, W] in [0, 1]) from its PNG bytes.

    Raises InputError (status and reason) for anything but a one-channel 8-bit PNG within
    the size limit: the header is read (and every chunk's CRC checked) before decoding."""
    _, (width, height) = check_image(data, "image/png", None, max_pixels)
    with PngImagePlugin.PngImageFile(io.BytesIO(data)) as png:
        if png.mode != "L":
            raise InputError(422, f"heatmap must be an 8-bit grayscale PNG, not mode {png.mode}")
    grey = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if grey is None:
        raise InputError(400, "corrupt heatmap PNG (cannot be decoded)")
    if grey.ndim != 2 or grey.dtype != np.uint8 or grey.shape != (height, width):
        raise InputError(422, f"heatmap must be {width}x{height} 8-bit grayscale, decodes to {grey.shape}")
    return grey.astype(np.float32) / 255.0
