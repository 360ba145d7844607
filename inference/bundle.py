"""The model bundle: an ONNX file plus the metadata that makes it self-describing.

A bundle is a folder with `model.onnx` and `bundle.json`. The JSON says what task the model does,
its classes, how to prepare pixels, the operating threshold chosen at calibration, and where it
came from (training run, dataset hash). Inference reads all of it from here, so the edge cannot
disagree with training. The ONNX file's sha256 is checked on every load: a corrupted model is
refused. Every write signs the bundle (`zerodefect.inference.signing`, `signature.json`), and a
station loads only bundles signed by a key it trusts, so a swapped model with a rewritten hash is
refused too. This module never imports torch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

BUNDLE_JSON = "bundle.json"
ONNX_FILE = "model.onnx"
# 2: `tiling` (sliced inference). A reader refuses a newer format than its own, so a feature
# that changes how a model is scored is never silently ignored by an older station.
FORMAT_VERSION = 2
# Forward passes per image for each test-time augmentation mode.
TTA_VIEWS = {"none": 1, "flips": 4, "dihedral": 8}


class BundleError(ValueError):
    """A bundle that is missing, malformed, or whose model file does not match its hash."""


class InputSpec(BaseModel):
    """How raw pixels become the graph's input. Normalisation runs inside the graph."""

    height: int
    width: int
    color: Literal["RGB"] = "RGB"
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["uint8"] = "uint8"
    interpolation: Literal["area", "linear", "cubic", "nearest"] = "area"
    resize: Literal["stretch"] = "stretch"
    mean: list[float] = Field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = Field(default_factory=lambda: [0.229, 0.224, 0.225])
    normalize: Literal["in_graph"] = "in_graph"


class Tiling(BaseModel):
    """Sliced inference (zerodefect.inference.tiling): the frame is scored as overlapping square
    tiles of `tile` pixels of the original image, each resized to the model's input, and their
    boxes merged. Training cuts the same tiles, so small defects keep their pixels."""

    model_config = ConfigDict(extra="forbid")

    tile: int = Field(ge=16)
    overlap: float = Field(default=0.2, ge=0, le=0.5)
    # Also score the whole frame resized to the input (and train on it): large defects that
    # no tile holds whole are found whole, for one more forward pass per frame. Off by default:
    # on three generated sets of small spots (tests/test_tiling.py's) test mAP@0.5 was
    # 0.80/0.77/0.40 with it against 0.65/0.76/0.85 with tiles alone.
    full_frame: bool = False


class BundleMeta(BaseModel):
    """Everything the edge and the record need to know about a model, and nothing it must guess."""

    format_version: int = FORMAT_VERSION
    name: str
    task: Literal["classification", "detection", "anomaly"]
    classes: list[str]
    good_class: str | None = None
    input: InputSpec
    # Graph outputs by name; classification: "probabilities" [N, C].
    outputs: dict[str, str]
    # Operating point: a part is rejected when its defect score >= threshold. A detector
    # rejects a part when any detection's score reaches its class's threshold.
    threshold: float
    class_thresholds: dict[str, float] = Field(default_factory=dict)
    # Detector post-processing (zerodefect.inference.postprocess): score_thresh, nms_thresh,
    # topk_candidates, detections_per_img and level_sizes (dense points per pyramid level).
    postprocess: dict[str, Any] = Field(default_factory=dict)
    # A detector scored tile by tile (zerodefect.inference.tiling); None scores the whole frame.
    tiling: Tiling | None = None
    target_escape_rate: float | None = None
    tta: Literal["none", "flips", "dihedral"] = "none"
    quantization: Literal["none", "int8-qdq"] = "none"
    run_id: str | None = None
    dataset_hash: str | None = None
    onnx_sha256: str = ""
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    metrics: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)

    def defect_classes(self) -> list[str]:
        return [c for c in self.classes if c != self.good_class]


def sha256_file(path: Path) -> str:
    """The file's sha256, read in chunks (a model can be hundreds of MB)."""
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def write_bundle(
    folder: str | Path, onnx_bytes: bytes, meta: BundleMeta, signing_key: Ed25519PrivateKey | None = None
) -> Path:
    """Write model.onnx and bundle.json (with the ONNX file's sha256) into `folder`, and sign
    them with `signing_key` (default: the configured key, `zerodefect.inference.signing`)."""
    from zerodefect.inference.signing import sign_bundle

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ONNX_FILE).write_bytes(onnx_bytes)
    meta = meta.model_copy(update={"onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest()})
    (folder / BUNDLE_JSON).write_text(meta.model_dump_json(indent=2) + "\n")
    sign_bundle(folder, signing_key)
    return folder


def discard_bundle(folder: str | Path) -> None:
    """Remove a half-written bundle (an export that failed its parity check)."""
    from zerodefect.inference.signing import SIGNATURE_JSON

    for name in (ONNX_FILE, BUNDLE_JSON, SIGNATURE_JSON):
        (Path(folder) / name).unlink(missing_ok=True)


def update_meta(
    folder: str | Path, signing_key: Ed25519PrivateKey | None = None, **changes: Any
) -> BundleMeta:
    """Change metadata fields of an existing bundle (e.g. metrics after evaluation) and sign it
    again: the signature covers bundle.json as it ships."""
    from zerodefect.inference.signing import sign_bundle

    folder = Path(folder)
    meta = read_meta(folder).model_copy(update=changes)
    (folder / BUNDLE_JSON).write_text(meta.model_dump_json(indent=2) + "\n")
    sign_bundle(folder, signing_key)
    return meta


def read_meta(folder: str | Path) -> BundleMeta:
    folder = Path(folder)
    meta_path = folder / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{folder}: not a model bundle ({BUNDLE_JSON} missing)")
    try:
        data = json.loads(meta_path.read_text())
        meta = BundleMeta.model_validate(data)
    except (json.JSONDecodeError, ValidationError) as exc:
        raise BundleError(f"{meta_path}: invalid bundle metadata: {exc}") from exc
    if meta.format_version > FORMAT_VERSION:
        raise BundleError(
            f"{meta_path}: bundle format {meta.format_version} is newer than this version of zerodefect "
            f"reads ({FORMAT_VERSION}); upgrade zerodefect where this bundle is served"
        )
    return meta


def load_bundle(
    folder: str | Path, trusted_keys: Sequence[Ed25519PublicKey] | None = None
) -> tuple[BundleMeta, Path]:
    """Read a bundle's metadata and verify its ONNX file; returns (meta, onnx path).

    With `trusted_keys` (a station always passes them), the bundle must first be signed by one
    of them, over exactly the files it holds now. None skips the signature: training and
    evaluation read bundles they have just written. Raises BundleError (SignatureError for the
    signature) when the ONNX file is missing or its sha256 differs from the one the bundle was
    written with.
    """
    folder = Path(folder)
    if trusted_keys is not None:
        from zerodefect.inference.signing import verify_bundle

        verify_bundle(folder, trusted_keys)
    meta = read_meta(folder)
    onnx_path = folder / ONNX_FILE
    if not onnx_path.is_file():
        raise BundleError(f"{folder}: {ONNX_FILE} missing")
    actual = sha256_file(onnx_path)
    if actual != meta.onnx_sha256:
        raise BundleError(
            f"{onnx_path}: sha256 {actual[:16]}... does not match the bundle's "
            f"{meta.onnx_sha256[:16]}...; refusing a tampered or corrupted model"
        )
    return meta, onnx_path
