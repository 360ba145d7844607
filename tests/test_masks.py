"""Anomaly data: MVTec AD, YOLO polygon and mask-folder importers, and mask validation."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.datasets.importers import import_dataset, import_mask_folders
from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.datasets.validate import validate

from .synthetic import part_image


def _image(path: Path, rng: np.random.Generator, height: int = 48, width: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image, _ = part_image(rng, max(height, width), defective=False)
    cv2.imwrite(str(path), image[:height, :width])


def _mask(path: Path, rect: tuple[int, int, int, int] | None, height: int = 48, width: int = 64) -> None:
    mask = np.zeros((height, width), np.uint8)
    if rect:
        x1, y1, x2, y2 = rect
        mask[y1:y2, x1:x2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), mask)


def test_mvtec_layout_gives_a_good_only_train_split_and_test_masks(tmp_path: Path) -> None:
    rng, root = np.random.default_rng(0), tmp_path / "bottle"
    for i in range(10):
        _image(root / "train/good" / f"{i:03d}.png", rng)
    for defect, n in (("good", 2), ("crack", 2), ("hole", 1)):
        for i in range(n):
            _image(root / "test" / defect / f"{i:03d}.png", rng)
    for i in range(2):
        _mask(root / "ground_truth/crack" / f"{i:03d}_mask.png", (5, 5, 20, 9))
    manifest = import_dataset("mvtec", root, val=0.2, seed=1)
    assert manifest.task == "anomaly" and manifest.good_class == "good"
    assert manifest.classes == ["good", "crack", "hole"]
    assert manifest.counts() == {
        "test": {"crack": 2, "good": 2, "hole": 1},
        "train": {"good": 8},
        "val": {"good": 2},
    }
    masks = {s.path: s.mask for s in manifest.samples if s.mask}
    # Only the defects with a ground-truth file carry one; the hole keeps its image label only.
    assert masks == {f"test/crack/{i:03d}.png": f"ground_truth/crack/{i:03d}_mask.png" for i in range(2)}
    assert validate(manifest).images == 15
    again = import_dataset("mvtec", root, val=0.2, seed=2)
    assert {s.path for s in again.split("val")} != {s.path for s in manifest.split("val")}
    with pytest.raises(DatasetError, match="not the MVTec AD layout"):
        import_dataset("mvtec", root / "train")


def _yolo_seg(root: Path) -> None:
    rng = np.random.default_rng(1)
    for split, name in (("train", "a"), ("train", "b"), ("val", "c")):
        _image(root / "images" / split / f"{name}.jpg", rng)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    # A 20 x 12 px rectangle through pixel centres (10, 8) .. (30, 20), normalised to 64 x 48.
    (root / "labels/train/a.txt").write_text(
        f"0 {10 / 64} {8 / 48} {30 / 64} {8 / 48} {30 / 64} {20 / 48} {10 / 64} {20 / 48}"
    )
    (root / "labels/train/b.txt").write_text("")
    (root / "labels/val/c.txt").write_text("0 0.5 0.5 0.6 0.5 0.6 0.6\n0 0.1 0.1 0.2 0.1 0.2 0.2\n")


def test_yolo_polygons_become_masks_outside_the_source(tmp_path: Path) -> None:
    source, masks = tmp_path / "kolektor", tmp_path / "out" / "masks"
    _yolo_seg(source)
    before = sorted(p.relative_to(source) for p in source.rglob("*"))
    out = tmp_path / "out" / "manifest.jsonl"
    answer = CliRunner().invoke(
        app, ["datasets", "import", "yolo-seg", str(source), "--masks", str(masks), "--out", str(out)]
    )
    assert answer.exit_code == 0, answer.output
    assert sorted(p.relative_to(source) for p in source.rglob("*")) == before  # read in place
    manifest = Manifest.read(out)
    assert manifest.task == "anomaly" and manifest.classes == ["good", "defect"]
    rows = {Path(s.path).name: s for s in manifest.samples}
    assert {n: (s.split, s.labels) for n, s in rows.items()} == {
        "a.jpg": ("train", ["defect"]),
        "b.jpg": ("train", ["good"]),
        "c.jpg": ("val", ["defect"]),
    }
    assert rows["b.jpg"].mask is None
    mask = cv2.imread(str(manifest.resolve_mask(rows["a.jpg"])), cv2.IMREAD_UNCHANGED)
    assert manifest.resolve_mask(rows["a.jpg"]) == masks / "train" / "a.png"
    expected = np.zeros((48, 64), np.uint8)
    expected[8:21, 10:31] = 255  # the vertices' pixels are inside
    assert np.array_equal(mask, expected)
    two = cv2.imread(str(manifest.resolve_mask(rows["c.jpg"])), cv2.IMREAD_GRAYSCALE)
    assert two[26, 35] == 255 and two[6, 9] == 255 and two[15, 20] == 0  # both polygons filled

    with pytest.raises(DatasetError, match="inside the source data set"):
        import_dataset("yolo-seg", source, masks=source / "masks")
    with pytest.raises(DatasetError, match="needs --masks"):
        import_dataset("yolo-seg", source)
    (source / "labels/train/b.txt").write_text("0 0.1 0.1 0.2\n")
    with pytest.raises(DatasetError, match=r"b\.txt:1: bad polygon row"):
        import_dataset("yolo-seg", source, masks=masks)


def test_mask_folders_beside_image_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for name in ("a", "b", "c"):
        _image(tmp_path / "images/test" / f"{name}.png", rng)
    _mask(tmp_path / "masks/test/a_mask.png", (1, 1, 9, 9))
    _mask(tmp_path / "masks/test/b.png", None)  # an empty mask: a good part
    manifest = import_mask_folders(tmp_path)
    assert [(s.labels, s.split, s.mask) for s in manifest.samples] == [
        (["defect"], "test", "masks/test/a_mask.png"),
        (["good"], "test", "masks/test/b.png"),
        (["good"], "test", None),
    ]
    assert manifest.task == "anomaly" and manifest.good_class == "good"
    validate(manifest)


def test_validation_names_masks_of_another_size_or_not_binary_and_the_hash_covers_mask_bytes(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    for name in ("a", "b", "c", "d"):
        _image(tmp_path / "images/train" / f"{name}.png", rng)
    _mask(tmp_path / "masks/train/a.png", (1, 1, 9, 9))
    _mask(tmp_path / "masks/train/b.png", (1, 1, 9, 9), height=24, width=32)  # half size
    soft = np.zeros((48, 64), np.uint8)
    soft[4:8, 4:8], soft[8:10, 4:8] = 255, 128  # anti-aliased edge
    cv2.imwrite(str(tmp_path / "masks/train/c.png"), soft)
    manifest = import_mask_folders(tmp_path)
    (tmp_path / "masks/train/c.png").rename(tmp_path / "masks/train/gone.png")  # d: missing below
    manifest.samples[3].mask = "masks/train/d.png"
    manifest.samples[2].mask = "masks/train/gone.png"
    with pytest.raises(DatasetError) as err:
        validate(manifest)
    text = str(err.value)
    assert "3 bad files" in text and "a.png" not in text
    assert f"{tmp_path / 'masks/train/b.png'}: mask is 32x24, its image 64x48" in text
    assert f"{tmp_path / 'masks/train/gone.png'}: mask is not binary: 3 values (0, 128, 255)" in text
    assert f"{tmp_path / 'masks/train/d.png'}: mask file missing" in text

    good = import_mask_folders(tmp_path)
    good.samples = good.samples[:1]
    first = validate(good).dataset_hash
    _mask(tmp_path / "masks/train/a.png", (1, 1, 9, 10))  # one more row of defect pixels
    assert validate(good).dataset_hash != first


def test_a_committed_split_file_gives_every_image_its_split(tmp_path: Path) -> None:
    """`--split-file` reproduces a committed split exactly, and refuses one that lists other
    images than the source has, naming the file."""
    source, masks = tmp_path / "kolektor", tmp_path / "out" / "masks"
    _yolo_seg(source)
    split = tmp_path / "split.csv"
    split.write_text(
        "# a comment line\nsplit,image,label\ntest,images/train/a.jpg,defect\n"
        "train,images/train/b.jpg,good\ntest,images/val/c.jpg,defect\n"
    )
    out = tmp_path / "out" / "manifest.jsonl"
    args = ["datasets", "import", "yolo-seg", str(source), "--masks", str(masks), "--out", str(out)]
    answer = CliRunner().invoke(app, [*args, "--split-file", str(split)])
    assert answer.exit_code == 0, answer.output
    splits = {Path(s.path).name: s.split for s in Manifest.read(out).samples}
    assert splits == {"a.jpg": "test", "b.jpg": "train", "c.jpg": "test"}

    split.write_text("split,image\ntrain,images/train/b.jpg\ntest,images/train/zzz.jpg\n")
    answer = CliRunner().invoke(app, [*args, "--split-file", str(split)])
    assert answer.exit_code != 0
    assert "split.csv" in answer.output and "2 not in the file" in answer.output
    assert "1 not in the manifest" in answer.output
    split.write_text("split,image\nholdout,images/train/b.jpg\n")
    answer = CliRunner().invoke(app, [*args, "--split-file", str(split)])
    assert answer.exit_code != 0 and "split.csv:2: split 'holdout'" in answer.output
