"""A new user's first data set (issue 16): boxes on the border, a source's own splits, masks in
folder trees, folded classes, `models list`, the report's operating point, `datasets inspect`
and docs/new-dataset.md; all on small generated images."""

from __future__ import annotations

import json
import re
import shlex
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from zerodefect.cli import app
from zerodefect.datasets.importers import import_coco, import_dataset, import_folders, import_voc, import_yolo
from zerodefect.datasets.inspect import inspect_manifest
from zerodefect.datasets.manifest import DatasetError, Manifest
from zerodefect.datasets.splits import split_dataset
from zerodefect.datasets.validate import validate

from .bundles import PASS_ALL, make_bundle, register

REPO = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], terminal_width=200)


def grey(path: Path, width: int, height: int, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), value, np.uint8))
    return path


def mask(path: Path, width: int, height: int) -> Path:
    pixels = np.zeros((height, width), np.uint8)
    pixels[2:6, 2:6] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), pixels)
    return path


# 1. Boxes a hair outside the image are clipped and counted; boxes really outside are refused.


def test_yolo_boxes_rounded_past_the_border_are_clipped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "yolo"
    grey(root / "images/train/a.png", 100, 80)
    grey(root / "images/train/b.png", 100, 80)
    (root / "classes.txt").write_text("pit\n")
    (root / "labels/train").mkdir(parents=True)
    # x1 = (0.09984 - 0.1) * 100 = -0.016 px: six-decimal rounding at the left edge.
    (root / "labels/train/a.txt").write_text("0 0.099840 0.500000 0.200000 0.250000\n")
    (root / "labels/train/b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.905 0.9 0.2 0.2\n")  # x2 100.5, y2 80
    manifest = import_yolo(root)
    boxes = {s.path: s.boxes.xyxy.tolist() for s in manifest.samples}
    assert boxes["images/train/a.png"] == [[0.0, 30.0, pytest.approx(19.984, abs=1e-3), 50.0]]
    assert boxes["images/train/b.png"][1] == [pytest.approx(80.5), 64.0, 100.0, 80.0]
    assert manifest.notes == [
        "2 boxes in 2 images overshot the image edge by at most 1% of the side (or 2 px) and were clipped to it"
    ]
    out = tmp_path / "m.jsonl"
    answer = run("datasets", "import", "yolo", root, "--out", out)
    assert answer.exit_code == 0, answer.output
    assert "2 boxes in 2 images overshot the image edge" in answer.output
    validate(Manifest.read(out), require_splits=True)  # clipped boxes pass the strict check

    # 3 px past a 100 px side is more than the tolerance (2 px): refused, naming file, line and box.
    (root / "labels/train/b.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.93 0.5 0.2 0.2\n")
    with pytest.raises(DatasetError) as err:
        import_yolo(root)
    text = str(err.value)
    assert (
        f"{root / 'labels/train/b.txt'}:2: box pit [83.0, 32.0, 103.0, 48.0] is outside the 100x80 image"
        in text
    )


def test_coco_and_voc_go_through_the_same_clip(tmp_path: Path) -> None:
    images = tmp_path / "coco"
    grey(images / "a.png", 64, 48)
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48}],
        "categories": [{"id": 3, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [-1.0, 5, 20, 20]},  # 1 px out: clipped
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 40, 20, 20]},  # 6 and 12 px out: refused
        ],
    }
    (images / "instances.json").write_text(json.dumps(coco))
    with pytest.raises(
        DatasetError, match=r"image 1 \(a.png\): box dent \[50.0, 40.0, 70.0, 60.0\] is outside"
    ):
        import_coco(images / "instances.json")
    coco["annotations"].pop()
    (images / "instances.json").write_text(json.dumps(coco))
    manifest = import_coco(images / "instances.json")
    assert manifest.samples[0].boxes.xyxy.tolist() == [[0.0, 5.0, 19.0, 25.0]]
    assert manifest.notes[0].startswith("1 boxes in 1 images overshot")

    voc = tmp_path / "voc"
    grey(voc / "images/b.png", 64, 48)
    (voc / "annotations").mkdir()
    # A 0-based exporter: xmin 0 becomes -1 after VOC's 1-based shift; no <size>: the header tells.
    xml = "<annotation><filename>b.png</filename><object><name>dent</name><bndbox><xmin>0</xmin>"
    xml += "<ymin>1</ymin><xmax>64</xmax><ymax>48</ymax></bndbox></object></annotation>"
    (voc / "annotations/b.xml").write_text(xml)
    manifest = import_voc(voc)
    assert manifest.samples[0].boxes.xyxy.tolist() == [[0.0, 0.0, 64.0, 48.0]]
    assert manifest.notes and "1 boxes in 1 images" in manifest.notes[0]
    ET.fromstring(xml)  # the test's XML is well formed


# 2. --val on a tree with its own train/test: val carved out of train; options never ignored.


def _split_tree(root: Path, per_class: int = 10) -> Path:
    for split, n in (("train", per_class), ("test", 4)):
        for label in ("good", "scratch"):
            for i in range(n):
                grey(root / split / label / f"{label}{i}.png", 16, 16, 100 + 50 * (label == "good"))
    return root


def test_val_is_carved_out_of_train_when_the_tree_has_train_and_test(tmp_path: Path) -> None:
    root = _split_tree(tmp_path / "tree")
    out = tmp_path / "m.jsonl"
    answer = run("datasets", "import", "folders", root, "--val", "0.2", "--seed", "3", "--out", out)
    assert answer.exit_code == 0, answer.output
    assert "kept the source's own splits (train 20, test 8 images)" in answer.output
    assert (
        "the source has no val split: 4 images (20% of train, stratified on labels, seed 3)" in answer.output
    )
    manifest = Manifest.read(out)
    per = Counter((s.split, s.label) for s in manifest.samples)
    assert per == {
        ("train", "good"): 8, ("train", "scratch"): 8, ("val", "good"): 2, ("val", "scratch"): 2,
        ("test", "good"): 4, ("test", "scratch"): 4,
    }  # fmt: skip
    # The val images come from train/ only, the same ones for the same seed.
    assert all(s.path.startswith("train/") for s in manifest.split("val"))
    again = import_folders(root)
    split_dataset(again, val=0.2, seed=3)
    assert {s.path for s in again.split("val")} == {s.path for s in manifest.split("val")}

    # An option that cannot apply is an error naming it.
    answer = run("datasets", "import", "folders", root, "--test", "0.3", "--out", out)
    assert answer.exit_code == 2
    assert "--test 0.3 cannot apply: the source has its own test split (8 images)" in answer.output
    answer = run("datasets", "import", "folders", root, "--masks", tmp_path, "--out", out)
    assert answer.exit_code == 2 and "--masks applies to format yolo-seg only, not folders" in answer.output
    answer = run("datasets", "import", "coco", root, "--include", "*.png", "--out", out)
    assert answer.exit_code == 2 and "--include applies to format folders only, not coco" in answer.output
    for label in ("good", "scratch"):  # with its own val too, the seed has nothing to decide
        grey(root / "val" / label / "v.png", 16, 16)
    answer = run("datasets", "import", "folders", root, "--seed", "3", "--out", out)
    assert answer.exit_code == 2
    assert "--seed 3 cannot apply: the source gives every image its split (train, val, test)" in answer.output
    split_csv = tmp_path / "split.csv"
    split_csv.write_text("split,image\n" + "".join(f"train,{s.path}\n" for s in import_folders(root).samples))
    answer = run(
        "datasets", "import", "folders", root, "--split-file", split_csv, "--val", "0.1", "--out", out
    )
    assert answer.exit_code == 2 and "--val 0.1 cannot apply" in answer.output


def test_a_config_source_with_its_own_splits_gets_val_the_same_way(tmp_path: Path) -> None:
    from zerodefect.training.config import load_config
    from zerodefect.training.runs import prepare_manifest

    root = _split_tree(tmp_path / "tree")
    source = {"format": "folders", "args": {"root": str(root)}, "split": {"val": 0.2}}
    config = {"name": "c", "data": {"manifest": str(tmp_path / "m.jsonl"), "source": source}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    manifest = prepare_manifest(load_config(tmp_path / "c.yaml"))
    assert Counter(s.split for s in manifest.samples) == {"train": 16, "val": 4, "test": 8}
    source["split"] = {"test": 0.3}
    config["data"]["manifest"] = str(tmp_path / "m2.jsonl")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DatasetError, match="data.source.split.test 0.3 cannot apply"):
        prepare_manifest(load_config(tmp_path / "c.yaml"))


# 3. Folder import: globs, and masks attached to their images in the usual layouts.


def test_folder_import_attaches_masks_and_honours_globs(tmp_path: Path) -> None:
    root = tmp_path / "tiles"
    grey(root / "good/g1.jpg", 16, 16)
    grey(root / "good/g2.jpg", 16, 16)
    grey(root / "good/thumbs/g1.jpg", 8, 8)  # to exclude
    grey(root / "crack/c1.jpg", 16, 16)
    mask(root / "crack/c1.png", 16, 16)  # same name, other suffix: the mask once *.jpg is chosen
    grey(root / "crack/c2.jpg", 16, 16)
    mask(root / "crack/c2_mask.png", 16, 16)  # the _mask suffix
    grey(root / "crack/c3.jpg", 16, 16)
    mask(root / "masks/crack/c3.png", 16, 16)  # a masks/ sibling tree
    with pytest.raises(DatasetError, match=r"c1.jpg and c1.png share a name: .*\(--include '\*\.jpg'\)"):
        import_folders(root)
    manifest = import_dataset("folders", root, include=["*.jpg"], exclude=["*/thumbs/*"])
    assert sorted(s.path for s in manifest.samples) == [
        "crack/c1.jpg", "crack/c2.jpg", "crack/c3.jpg", "good/g1.jpg", "good/g2.jpg",
    ]  # fmt: skip
    assert manifest.classes == ["good", "crack"]  # masks/ is not a class
    masks = {s.path: s.mask for s in manifest.samples}
    assert masks == {
        "crack/c1.jpg": "crack/c1.png", "crack/c2.jpg": "crack/c2_mask.png",
        "crack/c3.jpg": "masks/crack/c3.png", "good/g1.jpg": None, "good/g2.jpg": None,
    }  # fmt: skip
    assert "3 masks attached to their images (not imported as images)" in manifest.notes
    split_dataset(manifest, test=0.34, val=0.34)
    validate(manifest)  # every attached mask fits its image; image and mask are one row, one split

    # MVTec's tree through the folder importer: ground_truth/ holds masks, not a class.
    mv = tmp_path / "mvtec"
    for i in range(3):
        grey(mv / f"train/good/{i}.png", 16, 16)
    grey(mv / "test/good/0.png", 16, 16)
    grey(mv / "test/crack/0.png", 16, 16)
    mask(mv / "ground_truth/crack/0_mask.png", 16, 16)
    mask(mv / "ground_truth/crack/9_mask.png", 16, 16)  # no image: reported, not imported
    manifest = import_folders(mv)
    assert {(s.split, s.label, s.mask) for s in manifest.samples if s.split == "test"} == {
        ("test", "good", None),
        ("test", "crack", "ground_truth/crack/0_mask.png"),
    }
    assert manifest.classes == ["good", "crack"]
    assert any(n.startswith("1 mask files match no imported image") for n in manifest.notes)


# 4. Folding classes into good/defective, the type kept as metadata, reported per type.


def _typed_tree(root: Path) -> Path:
    for label, n in (("good", 12), ("crack", 6), ("dent", 6)):
        for i in range(n):
            grey(root / label / f"{label}{i}.png", 16, 16)
    return root


@pytest.fixture(scope="module")
def folded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folded manifest of good/crack/dent folders, written by the CLI."""
    tmp = tmp_path_factory.mktemp("folded")
    root = _typed_tree(tmp / "types")
    out = tmp / "m.jsonl"
    answer = run(
        "datasets", "import", "folders", root, "--fold-classes", "defective", "--test", "0.5", "--out", out
    )
    assert answer.exit_code == 0, answer.output
    assert "classes folded to good/defective" in answer.output
    return out


@pytest.fixture(scope="module")
def pass_all(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good/defective bundle that passes every part (every defect escapes)."""
    return make_bundle(
        tmp_path_factory.mktemp("b") / "bundle", PASS_ALL, size=32, classes=("good", "defective")
    )


def test_fold_classes_keeps_the_type_and_reports_escapes_per_type(
    folded: Path, pass_all: Path, tmp_path: Path
) -> None:
    manifest = Manifest.read(folded)
    assert manifest.classes == ["good", "defective"] and manifest.good_class == "good"
    types = Counter((s.label, s.meta["defect_type"], s.split) for s in manifest.samples)
    # Stratified on the type too: half of each type in test.
    assert types[("defective", "crack", "test")] == 3 and types[("defective", "dent", "test")] == 3
    assert types[("good", "good", "test")] == 6
    # The config's data.source.args take the same option.
    assert import_folders(folded.parent / "types", fold_classes="defective").classes == ["good", "defective"]
    report_path = tmp_path / "r.json"
    answer = run("evaluate", pass_all, "--manifest", folded, "--json", report_path)
    assert answer.exit_code == 0, answer.output
    groups = json.loads(report_path.read_text())["groups"]["defect_type"]
    assert {k: (g["escapes"], g["defective"], g["escape_rate"]) for k, g in groups.items()} == {
        "crack": (3, 3, 1.0),
        "dent": (3, 3, 1.0),
        "good": (0, 0, None),
    }
    assert re.search(r"crack\s+│\s+3\s+│\s+3/3\s+│\s+1\.0", answer.output), answer.output


# 6. Reports lead with the calibrated operating point, and say why not accuracy at 0.5.


def test_evaluate_leads_with_the_operating_point(folded: Path, pass_all: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "r.json"
    answer = run("evaluate", pass_all, "--manifest", folded, "--json", report_path)
    assert answer.exit_code == 0, answer.output
    text = answer.output
    point, why, acc = (
        text.index("operating point"),
        text.index("accuracy at 0.5 misleads"),
        text.index("accuracy at 0.5 "),
    )
    assert point < why and point < text.index("escape rate") < text.index("auroc")
    assert "escape rate" in text and "1.0000 (6/6 defective)" in text and "0.0000 (0/6 good)" in text
    assert text.rindex("accuracy at 0.5") > text.index("auroc") and acc >= 0
    data = json.loads(report_path.read_text())
    assert data["operating_point"]["thresholds"] == {"threshold": PASS_ALL}
    assert data["operating_point"]["escape_rate"] == 1.0 and data["operating_point"]["escapes"] == 6
    assert "misleads on imbalanced data" in data["operating_point"]["why_not_accuracy_at_0.5"]
    assert data["at_threshold_0.5"]["accuracy"] is not None  # still there, after


# 5. `models list` without a name lists every registered model.


def test_models_list_without_a_name_lists_every_model(data_dir: Path, pass_all: Path) -> None:
    answer = run("models", "list")
    assert answer.exit_code == 0 and "no registered models yet" in answer.output
    register(pass_all, "alpha", "champion")
    register(pass_all, "alpha", "challenger")
    register(pass_all, "beta", "challenger")
    answer = run("models", "list")
    assert answer.exit_code == 0, answer.output
    rows = [line for line in answer.output.splitlines() if "alpha" in line or "beta" in line]
    assert len(rows) == 2
    assert re.search(r"alpha\s+│\s+2\s+│\s+v2, v1\s+│\s+@challenger v2, @champion v1", rows[0]), rows
    assert re.search(r"beta\s+│\s+1\s+│\s+v1\s+│\s+@challenger v1", rows[1]), rows
    answer = run("models", "list", "alpha")  # with a name: its versions, as before
    assert answer.exit_code == 0 and "champion" in answer.output and "challenger" in answer.output
    answer = run("models", "list", "gamma")
    assert answer.exit_code == 2 and "no registered model 'gamma'" in answer.output


# 7. `datasets inspect`: box sizes against the input size, with a suggestion.


def _small_box_yolo(root: Path, size: int, box: int, images: int = 4) -> Path:
    (root / "labels/train").mkdir(parents=True)
    (root / "classes.txt").write_text("pit\nscratch\n")
    for i in range(images):
        grey(root / f"images/train/p{i}.png", size, size)
        side = box / size
        big = 8 * box / size
        rows = [f"0 0.3 0.3 {side:.6f} {side:.6f}", f"1 0.6 0.6 {big:.6f} {big:.6f}"]
        (root / f"labels/train/p{i}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_inspect_measures_boxes_at_the_input_and_suggests_a_size_or_tiles(tmp_path: Path) -> None:
    root = _small_box_yolo(tmp_path / "pcb", size=640, box=12)
    out = tmp_path / "m.jsonl"
    assert run("datasets", "import", "yolo", root, "--out", out).exit_code == 0
    manifest = Manifest.read(out)
    found = inspect_manifest(manifest, (320, 320))
    pit, scratch = found.boxes
    assert (pit.name, pit.boxes, pit.images) == ("pit", 4, 4)
    assert pit.median_px == pytest.approx(12, abs=0.01) and pit.p10_at_input == pytest.approx(6, abs=0.01)
    assert scratch.median_at_input == pytest.approx(48, abs=0.01)
    # 6 px at 320 px input: 448 px input brings the small boxes to 8 px (under 640: suggested first).
    assert "Suggested: --set model.input_size=448" in found.suggestion
    assert "or tiles: --set model.tiling.tile=480 --set model.tiling.overlap=0.2 (4 tiles" in found.suggestion
    assert "no change needed" in inspect_manifest(manifest, (448, 448)).suggestion

    # 6 px boxes on 640 px boards need an 864 px input: over 640 px, tiles are suggested first.
    # A config, as train reads it, with --set as train takes it; its manifest imported from source.
    tiny = _small_box_yolo(tmp_path / "pcb6", size=640, box=6, images=2)
    source = {"format": "yolo", "args": {"root": str(tiny)}}
    config = {
        "name": "pcb",
        "task": "detection",
        "data": {"manifest": str(tmp_path / "m6.jsonl"), "source": source},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    answer = run("datasets", "inspect", tmp_path / "c.yaml", "--set", "model.input_size=320")
    assert answer.exit_code == 0, answer.output
    line = " ".join(answer.output.split())
    assert "model input 320 x 320 px" in line
    assert re.search(r"pit │ 2 │ 2 │ 6\.0 │ 6\.0 │ 3\.0 │ 3\.0", line), line
    tiles = "Suggested: --set model.tiling.tile=224 --set model.tiling.overlap=0.2 (16 tiles of 224 px per 640x640 image"
    assert tiles in line and "or --set model.input_size=864" in line
    # The suggested override, given back as train would take it, is enough.
    larger = re.search(r"--set (model\.input_size=\d+)", line).group(1)
    answer = run("datasets", "inspect", tmp_path / "c.yaml", "--set", larger)
    assert "no change needed" in answer.output and "pit 8.1 px" in answer.output
    answer = run("datasets", "inspect", tmp_path / "c.yaml", "--input-size", "640")
    assert answer.exit_code == 2 and "--input-size applies to a manifest" in answer.output


def test_inspect_a_classification_manifest_gives_counts_and_sizes(tmp_path: Path) -> None:
    root = _typed_tree(tmp_path / "types")
    grey(root / "dent/wide.png", 40, 20)
    out = tmp_path / "m.jsonl"
    assert run("datasets", "import", "folders", root, "--out", out).exit_code == 0
    answer = run("datasets", "inspect", out)
    assert answer.exit_code == 0, answer.output
    text = " ".join(answer.output.split())
    assert "classification, 25 images, model input 320 x 320 px" in text
    assert "smallest 16x16, median 16x16, largest 40x20; 2 distinct" in text
    assert re.search(r"train\s+│\s+dent\s+│\s+5", answer.output)


# 8. docs/new-dataset.md: its commands name real commands and options.


def test_new_dataset_doc_uses_real_commands_and_options() -> None:
    import typer

    doc = (REPO / "docs/new-dataset.md").read_text()
    assert "docs/new-dataset.md" in (REPO / "README.md").read_text()
    commands = [line.split(" #")[0].strip() for line in doc.splitlines() if line.startswith("zerodefect ")]
    assert len(commands) >= 8
    root = typer.main.get_command(app)
    helps: dict[str, str] = {}
    for command in commands:
        words = shlex.split(command)[1:]
        group = root.commands.get(words[0])
        assert group is not None, command
        path = words[:2] if hasattr(group, "commands") else words[:1]  # a group: its subcommand
        key = " ".join(path)
        if key not in helps:
            answer = run(*path, "--help")
            assert answer.exit_code == 0, (command, answer.output)
            helps[key] = answer.output
        for option in (w.split("=")[0] for w in words if w.startswith("--")):
            assert option in helps[key], (command, option)
