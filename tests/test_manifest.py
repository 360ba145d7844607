"""Manifest format, importers, splits, validation and the dataset hash."""

from __future__ import annotations

import json
import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from zerodefect.datasets.importers import (
    import_coco,
    import_elpv,
    import_folders,
    import_voc,
    import_yolo,
)
from zerodefect.datasets.manifest import DatasetError, Manifest, Sample
from zerodefect.datasets.splits import assign_splits
from zerodefect.datasets.validate import validate
from zerodefect.inference.result import Detections

from .synthetic import part_image


def test_folders_import_split_roundtrip(folder_dataset: Path, tmp_path: Path) -> None:
    manifest = import_folders(folder_dataset)
    assert manifest.classes == ["good", "scratch"] and manifest.good_class == "good"
    assign_splits(manifest, test=0.25, val=0.25, seed=3)
    per = Counter((s.split, s.label) for s in manifest.samples)
    # 24 per class: 6 test, 6 val, 12 train in every class (stratified).
    assert per == {
        (sp, c): n for c in ("good", "scratch") for sp, n in (("test", 6), ("val", 6), ("train", 12))
    }
    path = manifest.write(tmp_path / "m" / "manifest.jsonl")
    again = Manifest.read(path)
    rows = [s.to_json(manifest.classes) for s in manifest.samples]
    assert [s.to_json(again.classes) for s in again.samples] == rows
    assert again.resolve(again.samples[0]).is_file()
    # Same seed, same split; another seed, another split.
    other = assign_splits(import_folders(folder_dataset), test=0.25, val=0.25, seed=3)
    assert [s.split for s in other.samples] == [s.split for s in manifest.samples]
    moved = assign_splits(import_folders(folder_dataset), test=0.25, val=0.25, seed=4)
    assert [s.split for s in moved.samples] != [s.split for s in manifest.samples]


def test_split_folders_are_kept(tmp_path: Path, folder_dataset: Path) -> None:
    for split in ("train", "test"):
        shutil.copytree(folder_dataset, tmp_path / "ds" / split)
    manifest = import_folders(tmp_path / "ds")
    assign_splits(manifest, test=0.5, val=0.2, keep_existing=True)
    assert Counter(s.split for s in manifest.samples) == {"train": 48, "test": 48}


def test_validation_lists_every_bad_file(folder_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "bad"
    shutil.copytree(folder_dataset, root)
    manifest = assign_splits(import_folders(root), test=0.25, val=0.25)
    (root / "good" / "good_000.png").unlink()
    (root / "good" / "good_001.png").write_bytes(b"\x89PNG not really")
    manifest.samples[2].labels = ["dent"]
    manifest.samples[3].boxes = Detections.from_labels(["scratch"], [[10, 10, 80, 20]], manifest.classes)
    manifest.samples[4].labels = ["good", "scratch"]
    with pytest.raises(DatasetError) as err:
        validate(manifest)
    text = str(err.value)
    assert "5 bad files" in text
    assert "needs exactly one label, has ['good', 'scratch']" in text
    assert "good_000.png: missing file" in text
    assert "good_001.png: not a decodable image" in text
    assert "unknown label 'dent'" in text
    assert "box scratch [10.0, 10.0, 80.0, 20.0] is outside the 64x64 image" in text


def test_dataset_hash_tracks_pixels_labels_and_splits(folder_dataset: Path, tmp_path: Path) -> None:
    root = tmp_path / "h"
    shutil.copytree(folder_dataset, root)
    manifest = assign_splits(import_folders(root), test=0.25, val=0.25)
    first = validate(manifest).dataset_hash
    assert validate(Manifest.read(manifest.write(tmp_path / "h.jsonl"))).dataset_hash == first
    image = cv2.imread(str(root / "good" / "good_005.png"))
    image[0, 0] = 255 - image[0, 0]
    cv2.imwrite(str(root / "good" / "good_005.png"), image)
    changed_pixel = validate(manifest).dataset_hash
    assert changed_pixel != first
    manifest.samples[0].split = "val" if manifest.samples[0].split != "val" else "train"
    assert validate(manifest).dataset_hash != changed_pixel


def test_elpv_import_and_protocol_split() -> None:
    manifest = import_elpv()
    assert len(manifest.samples) == 2624
    labels = Counter(s.label for s in manifest.samples)
    assert labels == {"good": 1803, "defective": 821}
    assert Counter(s.meta["type"] for s in manifest.samples) == {"poly": 1550, "mono": 1074}
    assign_splits(manifest, test=0.25, val=0.10, seed=0, stratify_on=["probability", "type"])
    test = manifest.split("test")
    assert abs(len(test) - 656) <= 4
    # Every (probability, type) stratum is split in the same proportions.
    for key in {(s.meta["probability"], s.meta["type"]) for s in manifest.samples}:
        members = [s for s in manifest.samples if (s.meta["probability"], s.meta["type"]) == key]
        share = sum(s.split == "test" for s in members) / len(members)
        assert abs(share - 0.25) <= 0.5 / len(members) + 1e-9


def _write_voc(folder: Path, name: str, size: int, boxes: list[list[float]]) -> None:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "filename").text = f"{name}.png"
    sz = ET.SubElement(ann, "size")
    ET.SubElement(sz, "width").text, ET.SubElement(sz, "height").text = str(size), str(size)
    for b in boxes:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = "scratch"
        bb = ET.SubElement(obj, "bndbox")
        # VOC is 1-based and inclusive.
        for tag, value in zip(
            ("xmin", "ymin", "xmax", "ymax"), (b[0] + 1, b[1] + 1, b[2], b[3]), strict=True
        ):
            ET.SubElement(bb, tag).text = str(int(value))
    ET.ElementTree(ann).write(folder / f"{name}.xml")


def test_voc_coco_yolo_agree_on_the_same_boxes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    size, truth = 96, {}
    for d in ("voc/images", "voc/annotations", "yolo/images/train", "yolo/labels/train", "coco"):
        (tmp_path / d).mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 7, "name": "scratch"}]}
    for i in range(6):
        image, box = part_image(rng, size, defective=i % 3 != 0)
        name = f"p{i}"
        boxes = [box] if box else []
        truth[f"{name}.png"] = boxes
        for folder in ("voc/images", "yolo/images/train", "coco"):
            cv2.imwrite(str(tmp_path / folder / f"{name}.png"), image)
        _write_voc(tmp_path / "voc/annotations", name, size, boxes)
        lines = [
            f"0 {(b[0] + b[2]) / 2 / size} {(b[1] + b[3]) / 2 / size} {(b[2] - b[0]) / size} {(b[3] - b[1]) / size}"
            for b in boxes
        ]
        (tmp_path / "yolo/labels/train" / f"{name}.txt").write_text("\n".join(lines))
        coco["images"].append({"id": i, "file_name": f"{name}.png", "width": size, "height": size})
        for b in boxes:
            coco["annotations"].append(
                {
                    "id": 100 + i,
                    "image_id": i,
                    "category_id": 7,
                    "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                }
            )
    (tmp_path / "yolo/classes.txt").write_text("scratch\n")
    (tmp_path / "coco/instances.json").write_text(json.dumps(coco))

    voc = import_voc(tmp_path / "voc")
    yolo = import_yolo(tmp_path / "yolo")
    coco_m = import_coco(tmp_path / "coco/instances.json")
    for manifest in (voc, yolo, coco_m):
        assert manifest.task == "detection" and manifest.classes == ["scratch"]
        got = {Path(s.path).name: s.boxes.xyxy.tolist() for s in manifest.samples}
        assert got.keys() == truth.keys()
        for name, boxes in truth.items():
            assert np.allclose(np.array(got[name]).reshape(-1, 4), np.array(boxes).reshape(-1, 4), atol=1e-4)
        assign_splits(manifest, test=0.34, val=0.0, keep_existing=True)
        validate(manifest)
    assert {s.split for s in yolo.samples} == {"train"}
    assert sum(manifest.is_defective(s) for s in voc.samples) == 4


def test_bad_annotations_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations" / "x.xml").write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=r"x\.xml: not valid XML"):
        import_voc(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": []}')
    with pytest.raises(DatasetError, match="bad.json: not COCO"):
        import_coco(bad)


def test_manifest_rejects_unknown_task_and_bad_rows(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown task"):
        Manifest("segmentation", ["a"], [])
    path = tmp_path / "m.jsonl"
    Manifest("classification", ["good", "bad"], [Sample("a.png", ["good"], "train")], tmp_path, "good").write(
        path
    )
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(DatasetError, match=r"m.jsonl:3"):
        Manifest.read(path)


def test_a_manifest_on_disk_reads_to_detections_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    # The format on disk as earlier versions wrote it: {"label", "box"} per box, masks, meta.
    lines = [
        {
            "zerodefect_manifest": 1,
            "name": "old",
            "task": "detection",
            "classes": ["scratch", "pit"],
            "good_class": None,
            "root": ".",
        },
        {
            "path": "a.png",
            "split": "train",
            "labels": ["pit", "scratch"],
            "boxes": [
                {"label": "pit", "box": [1.5, 2.0, 30.25, 40.0]},
                {"label": "scratch", "box": [0.0, 3.07, 9.0, 9.5]},
            ],
            "meta": {"serial": "S1"},
        },
        {"path": "b.png", "split": "val", "labels": []},
        {"path": "c.png", "split": "test", "labels": ["pit"], "mask": "masks/c.png"},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / "old.jsonl").write_text(text)
    manifest = Manifest.read(tmp_path / "old.jsonl")
    a = manifest.samples[0]
    assert isinstance(a.boxes, Detections) and a.boxes.labels(manifest.classes) == ["pit", "scratch"]
    assert np.allclose(a.boxes.xyxy, [[1.5, 2.0, 30.25, 40.0], [0.0, 3.07, 9.0, 9.5]])
    assert a.boxes.scores.tolist() == [1.0, 1.0] and len(manifest.samples[1].boxes) == 0
    assert manifest.resolve_mask(manifest.samples[2]) == tmp_path / "masks/c.png"
    assert manifest.write(tmp_path / "again.jsonl").read_text() == text


def test_a_box_of_an_unknown_class_is_refused_at_read_with_its_line(tmp_path: Path) -> None:
    header = {"zerodefect_manifest": 1, "task": "detection", "classes": ["scratch"], "root": "."}
    row = {
        "path": "a.png",
        "split": "train",
        "labels": ["dent"],
        "boxes": [{"label": "dent", "box": [0, 0, 4, 4]}],
    }
    (tmp_path / "m.jsonl").write_text(json.dumps(header) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DatasetError, match=r"m\.jsonl:2: bad row \(unknown class 'dent'"):
        Manifest.read(tmp_path / "m.jsonl")


def test_merged_extra_data_keeps_box_classes_and_masks_across_class_orders(tmp_path: Path) -> None:
    base = Manifest("detection", ["scratch", "pit"], [Sample("a.png", [], "train")], tmp_path / "base")
    pit = Detections.from_labels(["pit"], [[1, 2, 3, 4]], ["pit"])
    extra = Manifest(
        "detection", ["pit"], [Sample("b.png", ["pit"], None, pit, mask="b_mask.png")], tmp_path / "x"
    )
    merged = base.merged(extra)
    b = merged.samples[1]
    assert b.boxes.labels(merged.classes) == ["pit"] and b.boxes.class_id.tolist() == [1]
    assert b.split == "train" and merged.resolve_mask(b) == (tmp_path / "x" / "b_mask.png").resolve()
