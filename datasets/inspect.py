"""`zerodefect datasets inspect`: what a data set looks like to the model, before training.

A detector finds a defect only if it keeps a few pixels at the model's input: its finest
feature map has a stride of 8 px, so a box that shrinks below ~8 px when the image is resized
to the input size is mostly lost. This module measures every class's box sides in the image's
own pixels and at the input size, and when the small ones (the 10th percentile) fall below
8 px it suggests the cheaper of two fixes: a larger input size, or tiles (the SAHI idea: the
image cut into overlapping tiles, each resized to the input, boxes merged back) through the
config key `model.tiling`. For classification and anomaly manifests it gives class counts and
image sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from zerodefect.datasets.importers import image_size
from zerodefect.datasets.manifest import DatasetError, Manifest

# The detector's finest stride (training.health.FINEST_STRIDE): below it a box is mostly lost.
MIN_BOX_PX = 8.0
# Tiling overlap suggested (the default of model.tiling.overlap): a defect cut by one tile's
# edge lies whole in the next one when it is smaller than the overlap.
TILE_OVERLAP = 0.2
# Input sizes and tiles are suggested in multiples of the network's largest stride.
SIZE_STEP = 32
# Beyond this input side, tiles are suggested first: a 640 px input already costs 4x a 320 px
# one per image, and larger ones no longer fit a training batch on a CPU box.
MAX_INPUT = 640


@dataclass
class ClassBoxes:
    """One class's boxes: count, and the box side (the shorter of width and height, in px) at
    the median and 10th percentile, in the image's pixels and at the model's input."""

    name: str
    boxes: int
    images: int
    median_px: float | None
    p10_px: float | None
    median_at_input: float | None
    p10_at_input: float | None


@dataclass
class Inspection:
    """What `datasets inspect` prints: counts, image sizes, box statistics and a suggestion."""

    name: str
    task: str
    images: int
    counts: dict[str, dict[str, int]]
    input_hw: tuple[int, int]
    # (width, height): the smallest, median and largest image, and how many distinct sizes.
    sizes: dict[str, tuple[int, int]]
    distinct_sizes: int
    unreadable: list[str] = field(default_factory=list)
    boxes: list[ClassBoxes] = field(default_factory=list)
    masks: int = 0
    tile: int | None = None
    suggestion: str | None = None


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def inspect_manifest(manifest: Manifest, input_hw: tuple[int, int], tile: int | None = None) -> Inspection:
    """Measure `manifest` against a model input of `input_hw` (height, width); `tile` is the
    config's model.tiling.tile when tiling is on (each tile, not the image, is resized)."""
    sizes: list[tuple[int, int]] = []
    unreadable: list[str] = []
    sides: dict[str, list[float]] = {c: [] for c in manifest.classes}
    at_input: dict[str, list[float]] = {c: [] for c in manifest.classes}
    images_with: dict[str, int] = {c: 0 for c in manifest.classes}
    in_h, in_w = input_hw
    for sample in manifest.samples:
        size = image_size(manifest.resolve(sample))
        if size is None:
            unreadable.append(sample.path)
            continue
        sizes.append(size)
        if not len(sample.boxes):
            continue
        width, height = size
        # What the model's input covers of this image: the whole image, or one tile.
        seen_w, seen_h = (min(tile, width), min(tile, height)) if tile else (width, height)
        xyxy = sample.boxes.xyxy.astype(np.float64)
        box_w, box_h = xyxy[:, 2] - xyxy[:, 0], xyxy[:, 3] - xyxy[:, 1]
        native = np.minimum(box_w, box_h)
        scaled = np.minimum(box_w * in_w / seen_w, box_h * in_h / seen_h)
        labels = sample.boxes.labels(manifest.classes)
        for label, side, side_in in zip(labels, native, scaled, strict=True):
            sides[label].append(float(side))
            at_input[label].append(float(side_in))
        for label in set(labels):
            images_with[label] += 1
    if not sizes:
        raise DatasetError(
            f"{manifest.name}: no readable images", [(p, "unreadable") for p in unreadable[:50]]
        )
    areas = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    result = Inspection(
        name=manifest.name,
        task=manifest.task,
        images=len(manifest.samples),
        counts=manifest.counts(),
        input_hw=input_hw,
        sizes={"smallest": areas[0], "median": areas[len(areas) // 2], "largest": areas[-1]},
        distinct_sizes=len(set(sizes)),
        unreadable=unreadable,
        masks=sum(s.mask is not None for s in manifest.samples),
        tile=tile,
    )
    if manifest.task == "detection":
        result.boxes = [
            ClassBoxes(
                c,
                len(sides[c]),
                images_with[c],
                _percentile(sides[c], 50),
                _percentile(sides[c], 10),
                _percentile(at_input[c], 50),
                _percentile(at_input[c], 10),
            )
            for c in manifest.classes
        ]
        result.suggestion = suggest(result.boxes, input_hw, result.sizes["median"], tile)
    return result


def _round_up(value: float) -> int:
    return int(math.ceil(value / SIZE_STEP) * SIZE_STEP)


def tiles_per_image(width: int, height: int, tile: int, overlap: float = TILE_OVERLAP) -> int:
    """How many tiles of side `tile` with `overlap` cover a width x height image."""
    stride = max(1.0, tile * (1 - overlap))

    def along(side: int) -> int:
        return 1 if side <= tile else math.ceil((side - tile) / stride) + 1

    return along(width) * along(height)


def suggest(
    boxes: list[ClassBoxes], input_hw: tuple[int, int], image_wh: tuple[int, int], tile: int | None = None
) -> str:
    """The fix for defects that shrink below MIN_BOX_PX at the input, as `--set` overrides.

    Both fixes show the model about the same pixels per image; a larger input is simpler and
    is suggested first up to MAX_INPUT px, tiling beyond it (each forward pass stays at the
    input size, so batches fit and latency per tile stays what it is today).
    """
    measured = [b for b in boxes if b.p10_at_input is not None]
    if not measured:
        return "no boxes: nothing to size the input for"
    worst = min(measured, key=lambda b: b.p10_at_input)
    if worst.p10_at_input >= MIN_BOX_PX:
        return (
            f"the small boxes keep >= {MIN_BOX_PX:g} px at {input_hw[1]}x{input_hw[0]} input "
            f"(smallest p10: {worst.name} {worst.p10_at_input:.1f} px): no change needed"
        )
    head = (
        f"{worst.name}: 10 % of its boxes are under {worst.p10_at_input:.1f} px at "
        f"{input_hw[1]}x{input_hw[0]} input (the detector needs about {MIN_BOX_PX:g} px)"
    )
    width, height = image_wh
    side = max(input_hw)
    bigger = _round_up(side * MIN_BOX_PX / worst.p10_at_input)
    larger = f"--set model.input_size={bigger} ({(bigger / side) ** 2:.1f}x the pixels per image)"
    # A tile of T image pixels is resized to the input, so a box of s px becomes s * input / T:
    # T = s * input / 8 keeps the small boxes at 8 px.
    native_p10 = worst.p10_px or 0.0
    tile_px = max(SIZE_STEP, int(native_p10 * min(input_hw) / MIN_BOX_PX) // SIZE_STEP * SIZE_STEP)
    tiled = (
        f"--set model.tiling.tile={tile_px} --set model.tiling.overlap={TILE_OVERLAP} "
        f"({tiles_per_image(width, height, tile_px)} tiles of {tile_px} px per {width}x{height} image, "
        f"each resized to {input_hw[1]} px)"
    )
    if native_p10 < MIN_BOX_PX:
        head += (
            f"; they are {native_p10:.1f} px in the image itself, so only upscaling reaches {MIN_BOX_PX:g} px"
        )
    if tile is None and bigger <= MAX_INPUT:
        return f"{head}. Suggested: {larger}; or tiles: {tiled}"
    return f"{head}. Suggested: {tiled}; or {larger}"
