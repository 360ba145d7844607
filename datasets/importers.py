"""Importers: turn the layouts plants and public data sets use into one Manifest.

Each importer only reads labels and file names; `validate` later opens every image. Errors
name the file and the problem.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from fnmatch import fnmatch
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from zerodefect.datasets.manifest import FOLDED_KEY, SPLITS, DatasetError, Manifest, Sample
from zerodefect.datasets.masks import rasterise, read_mask
from zerodefect.datasets.splits import assign_splits
from zerodefect.datasets.validate import clip_boxes, clip_note
from zerodefect.inference.result import Detections

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
# A mask must keep its exact values: never a JPEG.
LOSSLESS_SUFFIXES = {".png", ".bmp", ".tif", ".tiff"}


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the image's header (Pillow reads no pixels), or None when it cannot
    be read: importers and `datasets inspect` need sizes of many images, not their pixels."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError):
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)  # formats Pillow lacks
        return None if image is None else (image.shape[1], image.shape[0])


class _Clipping:
    """Counts the boxes an importer clipped, for its note."""

    def __init__(self) -> None:
        self.boxes = 0
        self.images = 0

    def check(
        self, boxes: list[list[float]], labels: list[str], size: tuple[int, int], where: str, problems: list
    ) -> np.ndarray:
        """The image's boxes clipped; problems (box really outside) appended under `where`."""
        result = clip_boxes(np.asarray(boxes, np.float64), labels, *size)
        problems.extend((where, problem) for problem in result.problems)
        self.boxes += result.clipped
        self.images += bool(result.clipped)
        return result.boxes

    def notes(self) -> list[str]:
        return [clip_note(self.boxes, self.images)] if self.boxes else []


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def _split_tree(images_root: Path) -> list[tuple[Path, Path, str | None]]:
    """Each image under `images_root`, its path relative to it, and the split its first folder
    names (images/train/x.png), if any: the layout of YOLO and mask-folder data sets."""
    out = []
    for image in _images_in(images_root):
        rel = image.relative_to(images_root)
        out.append((image, rel, rel.parts[0] if len(rel.parts) > 1 and rel.parts[0] in SPLITS else None))
    return out


# Folder names that hold masks, not images (MVTec's ground_truth/, the common masks/), matched
# without case, and the file-name suffix of a mask beside its image (x.png, x_mask.png).
MASK_DIRS = frozenset({"masks", "mask", "ground_truth", "groundtruth", "gt"})
MASK_SUFFIX = "_mask"


def _is_mask_file(rel: Path) -> bool:
    """A file in a mask tree or named <stem>_mask: never an image to import."""
    return rel.stem.lower().endswith(MASK_SUFFIX) or any(p.lower() in MASK_DIRS for p in rel.parts[:-1])


def _selected(rel: Path, include: list[str], exclude: list[str]) -> bool:
    """Whether `rel` passes the globs: a pattern with / matches the path relative to the source
    (fnmatch, so * crosses folders), one without matches the file name."""

    def hit(pattern: str) -> bool:
        return fnmatch(rel.as_posix(), pattern) if "/" in pattern else fnmatch(rel.name, pattern)

    return (not include or any(hit(p) for p in include)) and not any(hit(p) for p in exclude)


def _attached_mask(image: Path, root: Path, images: set[Path]) -> Path | None:
    """The mask of `image` in the layouts data sets ship, nearest first:

    - beside it: x_mask.<ext>, or x.<other lossless ext> when that file is not imported as an
      image (a folder of x.jpg images and x.png masks, with --include '*.jpg');
    - in a masks/ or ground_truth/ sibling tree of the image's folder or of any folder above it,
      at the same relative path or with its first folder dropped (ROOT/test/crack/x.png has its
      mask at ROOT/ground_truth/crack/x_mask.png, as MVTec ships; ROOT/crack/images/x.png at
      ROOT/crack/masks/x.png), as x_mask.<ext> or x.<ext>.
    """
    for suffix in sorted(LOSSLESS_SUFFIXES):
        candidate = image.with_suffix(suffix)
        if candidate != image and candidate not in images and candidate.is_file():
            return candidate
    beside = _mask_beside(image.parent, image.stem, names=(image.stem + MASK_SUFFIX,))
    if beside is not None:
        return beside
    folders = image.parent.relative_to(root).parts
    for depth in range(len(folders), -1, -1):
        ancestor, rest = root.joinpath(*folders[:depth]), folders[depth:]
        for tree in _mask_trees(ancestor):
            for sub in (rest, rest[1:]) if rest else (rest,):
                found = _mask_beside(tree.joinpath(*sub), image.stem)
                if found is not None:
                    return found
    return None


@lru_cache(maxsize=1024)
def _mask_trees(folder: Path) -> list[Path]:
    """The mask trees (masks/, ground_truth/...) directly under `folder`; cached, as every image
    of a folder asks."""
    return sorted(
        folder / name for name in os.listdir(folder) if name.lower() in MASK_DIRS and (folder / name).is_dir()
    )


def import_folders(
    root: str | Path,
    good_class: str | None = "good",
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    fold_classes: str | None = None,
) -> Manifest:
    """Class-per-folder trees: ROOT/<class>/*.png, or ROOT/<split>/<class>/*.png.

    `good_class` names the folder of good parts; it is listed first among the classes.
    `include`/`exclude` are globs (see `_selected`) choosing the images. Masks are recognised
    (`_attached_mask`: <stem>_mask files, masks/ and ground_truth/ trees) and attached to their
    image, never imported as images, so a part and its mask always share a split.
    `fold_classes` names one defective class that every class but the good one becomes (a
    binary good/defective classifier), the original class kept as metadata `defect_type`.
    """
    root = Path(root)
    include, exclude = list(include or []), list(exclude or [])
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    mask_files = {p for p in files if _is_mask_file(p.relative_to(root))}
    images = [p for p in files if p not in mask_files and _selected(p.relative_to(root), include, exclude)]
    top = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.lower() not in MASK_DIRS)
    split_layout = bool(top) and all(name in SPLITS for name in top)
    depth = 3 if split_layout else 2  # split/class/file or class/file, at least
    outside = [p for p in images if len(p.relative_to(root).parts) < depth]
    images = [p for p in images if len(p.relative_to(root).parts) >= depth]
    problems = _same_stem(images, root)
    if problems:
        raise DatasetError(f"{root}: images that share a name", problems)
    chosen = set(images)
    _mask_trees.cache_clear()
    samples: list[Sample] = []
    attached: set[Path] = set()
    for image in images:
        rel = image.relative_to(root)
        mask = _attached_mask(image, root, chosen)
        if mask is not None:
            attached.add(mask)
        samples.append(
            Sample(
                path=str(rel),
                labels=[rel.parts[1] if split_layout else rel.parts[0]],
                split=rel.parts[0] if split_layout else None,
                mask=None if mask is None else str(mask.relative_to(root)),
            )
        )
    if not samples:
        raise DatasetError(f"{root}: no images found in class folders")
    classes = sorted({s.labels[0] for s in samples})
    if good_class in classes:
        classes = [good_class] + [c for c in classes if c != good_class]
    else:
        good_class = None
    notes = []
    if fold_classes:
        classes = _fold(samples, classes, good_class, fold_classes, root)
        notes.append(
            f"classes folded to {good_class}/{fold_classes}; the original class is kept as meta "
            f"{FOLDED_KEY!r} (per-type reports, stratified splits)"
        )
    if attached:
        notes.append(f"{len(attached)} masks attached to their images (not imported as images)")
    orphans = mask_files - attached
    if orphans:
        notes.append(f"{len(orphans)} mask files match no imported image, e.g. {sorted(orphans)[0]}")
    if outside:
        notes.append(f"{len(outside)} images outside the class folders were left out, e.g. {outside[0]}")
    manifest = Manifest("classification", classes, samples, root, good_class, root.name)
    manifest.notes = notes
    return manifest


def _same_stem(images: list[Path], root: Path) -> list[tuple[str, str]]:
    """Images of one folder that share a name (x.jpg and x.png): usually an image and its mask,
    which must not both be imported as parts."""
    by_stem: dict[Path, list[Path]] = {}
    for image in images:
        by_stem.setdefault(image.with_suffix(""), []).append(image)
    # Masks are lossless; a photo next to one is usually the JPEG.
    return [
        (
            str(paths[0].parent),
            f"{' and '.join(p.name for p in paths)} share a name: if one is the other's mask, import "
            f"only the images (--include '*{min(paths, key=lambda p: p.suffix.lower() not in ('.jpg', '.jpeg')).suffix}') "
            "and it is attached as the mask",
        )
        for paths in by_stem.values()
        if len(paths) > 1
    ]


def _fold(
    samples: list[Sample], classes: list[str], good_class: str | None, folded: str, root: Path
) -> list[str]:
    """Relabel every non-good sample `folded`, keeping its class in meta[FOLDED_KEY]."""
    if good_class is None:
        raise DatasetError(f"{root}: folding classes needs a good class folder; classes found: {classes}")
    if folded == good_class:
        raise DatasetError(f"{root}: the folded class may not be the good class {good_class!r}")
    for sample in samples:
        sample.meta[FOLDED_KEY] = sample.labels[0]
        sample.labels = [good_class if sample.labels[0] == good_class else folded]
    return [good_class, folded]


def elpv_data_dir() -> Path:
    """Where the `elpv-dataset` package keeps labels.csv and its images."""
    try:
        import elpv_dataset
    except ImportError as exc:
        raise DatasetError("the ELPV importer needs the `elpv-dataset` package") from exc
    return Path(elpv_dataset.__file__).parent / "data"


def import_elpv(data_dir: str | Path | None = None, threshold: float = 0.5) -> Manifest:
    """ELPV solar cells: defective when the experts' probability >= threshold.

    The probability and the mono/poly cell type are kept as metadata, for soft-label training,
    stratified splits and per-type reports.
    """
    data_dir = Path(data_dir) if data_dir else elpv_data_dir()
    labels_csv = data_dir / "labels.csv"
    if not labels_csv.is_file():
        raise DatasetError(f"{labels_csv}: ELPV labels not found")
    samples = []
    for number, line in enumerate(labels_csv.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            path, prob, cell_type = line.split()
            probability = float(prob)
        except ValueError as exc:
            raise DatasetError(f"{labels_csv}:{number}: bad row {line!r}") from exc
        label = "defective" if probability >= threshold else "good"
        meta = {"probability": round(probability, 6), "type": cell_type}
        samples.append(Sample(path=path, labels=[label], meta=meta))
    return Manifest("classification", ["good", "defective"], samples, data_dir, "good", "elpv")


def _voc_number(node: ET.Element, tag: str, where: str) -> float:
    text = node.findtext(tag)
    if text is None:
        raise DatasetError(f"{where}: <{tag}> missing")
    try:
        return float(text)
    except ValueError as exc:
        raise DatasetError(f"{where}: <{tag}> is not a number: {text!r}") from exc


def import_voc(
    root: str | Path,
    images_dir: str | Path | None = None,
    annotations_dir: str | Path | None = None,
    classes: list[str] | None = None,
) -> Manifest:
    """Pascal VOC: one XML per image. Finds `Annotations/`+`JPEGImages/` or
    `annotations/`+`images/` under ROOT unless the folders are given.

    VOC boxes are 1-based inclusive pixels; they are stored as 0-based [xmin, xmax) so that a
    box never reaches past the image edge.
    """
    root = Path(root)
    ann = Path(annotations_dir) if annotations_dir else _first_dir(root, "Annotations", "annotations")
    img = Path(images_dir) if images_dir else _first_dir(root, "JPEGImages", "images")
    problems: list[tuple[str, str]] = []
    clipping = _Clipping()
    found: list[tuple[str, list[str], list[list[float]]]] = []  # path, box labels, boxes
    for xml_path in sorted(ann.glob("*.xml")):
        try:
            tree = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            problems.append((str(xml_path), f"not valid XML ({exc})"))
            continue
        filename = tree.findtext("filename") or xml_path.stem + ".jpg"
        image_path = img / filename
        if not image_path.exists():
            matches = sorted(img.glob(xml_path.stem + ".*"))
            image_path = matches[0] if matches else image_path
        names, boxes = [], []
        try:
            for obj in tree.iter("object"):
                name = (obj.findtext("name") or "").strip()
                bb = obj.find("bndbox")
                if bb is None or not name:
                    raise DatasetError(f"{xml_path}: object without name or bndbox")
                x1, y1, x2, y2 = (_voc_number(bb, t, str(xml_path)) for t in ("xmin", "ymin", "xmax", "ymax"))
                names.append(name)
                boxes.append([x1 - 1, y1 - 1, x2, y2])
            size = _voc_size(tree, xml_path) if boxes else None
            if boxes and size is None:
                size = image_size(image_path)
                if size is None:
                    raise DatasetError(f"{xml_path}: no <size> and image {image_path} unreadable")
        except DatasetError as exc:
            problems.append((str(xml_path), str(exc).split(": ", 1)[-1]))
            continue
        if boxes:
            boxes = clipping.check(boxes, names, size, str(xml_path), problems).tolist()
        path = str(image_path.relative_to(root)) if image_path.is_relative_to(root) else str(image_path)
        found.append((path, names, boxes))
    if problems:
        raise DatasetError(f"{ann}: {len({p for p, _ in problems})} bad annotation files", problems)
    if not found:
        raise DatasetError(f"{ann}: no VOC annotations found")
    class_list = _class_list(classes, sorted({n for _, names, _ in found for n in names}), ann)
    samples = [
        Sample(path, sorted(set(names)), boxes=Detections.from_labels(names, boxes, class_list))
        for path, names, boxes in found
    ]
    manifest = Manifest("detection", class_list, samples, root, None, root.name)
    manifest.notes = clipping.notes()
    return manifest


def _voc_size(tree: ET.Element, xml_path: Path) -> tuple[int, int] | None:
    """(width, height) of a VOC annotation's <size>, or None when absent or zero (some tools
    write 0): the image's header tells then."""
    size = tree.find("size")
    if size is None or size.findtext("width") is None or size.findtext("height") is None:
        return None
    width, height = (int(_voc_number(size, t, str(xml_path))) for t in ("width", "height"))
    return (width, height) if width > 0 and height > 0 else None


def import_coco(annotations: str | Path, images_dir: str | Path | None = None) -> Manifest:
    """COCO detection JSON: bbox [x, y, w, h] becomes [x, y, x+w, y+h]. Images without
    annotations are kept as clean parts."""
    annotations = Path(annotations)
    try:
        data = json.loads(annotations.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(f"{annotations}: cannot read COCO JSON ({exc})") from exc
    images_dir = Path(images_dir) if images_dir else annotations.parent
    try:
        categories = {c["id"]: c["name"] for c in data["categories"]}
        images = {im["id"]: im for im in data["images"]}
        classes = [categories[k] for k in sorted(categories)]
        boxes: dict[int, tuple[list[str], list[list[float]]]] = {i: ([], []) for i in images}
        problems: list[tuple[str, str]] = []
        for a in data.get("annotations", []):
            if a["category_id"] not in categories or a["image_id"] not in images:
                problems.append(
                    (
                        str(annotations),
                        f"annotation {a.get('id')} refers to unknown image or category",
                    )
                )
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            boxes[a["image_id"]][0].append(categories[a["category_id"]])
            boxes[a["image_id"]][1].append([x, y, x + w, y + h])
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{annotations}: not COCO detection JSON ({exc!r})") from exc
    clipping = _Clipping()
    for i, im in images.items():
        names, found = boxes[i]
        if not found:
            continue
        try:
            size = (int(im.get("width") or 0), int(im.get("height") or 0))
        except (TypeError, ValueError):
            size = (0, 0)  # a bad size in the JSON: the image's header tells
        if min(size) <= 0:
            size = image_size(images_dir / str(im["file_name"])) or (0, 0)
        if min(size) <= 0:
            problems.append((str(images_dir / str(im["file_name"])), "no width/height and unreadable"))
            continue
        where = f"{annotations} image {im['id']} ({im['file_name']})"
        boxes[i] = (names, clipping.check(found, names, size, where, problems).tolist())
    if problems:
        raise DatasetError(f"{annotations}: bad annotations", problems)
    samples = [
        Sample(
            path=str(im["file_name"]),
            labels=sorted(set(boxes[i][0])),
            boxes=Detections.from_labels(*boxes[i], classes),
        )
        for i, im in sorted(images.items())
    ]
    manifest = Manifest("detection", classes, samples, images_dir, None, annotations.stem)
    manifest.notes = clipping.notes()
    return manifest


def import_yolo(root: str | Path, classes: list[str] | None = None) -> Manifest:
    """YOLO: ROOT/images/**/x.jpg with ROOT/labels/**/x.txt (`class cx cy w h`, normalised).

    Class names come from `classes`, ROOT/classes.txt or the `names:` list of ROOT/data.yaml.
    A `train`/`val`/`test` folder under images/ sets the split.
    """
    root = Path(root)
    images_root, labels_root = root / "images", root / "labels"
    if not images_root.is_dir():
        raise DatasetError(f"{root}: no images/ folder")
    names = classes or _yolo_names(root)
    problems: list[tuple[str, str]] = []
    clipping = _Clipping()
    samples = []
    for image_path, rel, split in _split_tree(images_root):
        label_path = (labels_root / rel).with_suffix(".txt")
        ids: list[int] = []
        boxes: list[list[float]] = []
        if label_path.exists():
            size = image_size(image_path)
            if size is None:
                problems.append((str(image_path), "unreadable image"))
                continue
            width, height = size
            for number, line in enumerate(label_path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    cls, cx, cy, w, h = line.split()[:5]
                    cid = int(cls)
                    if not 0 <= cid < len(names):
                        raise IndexError(cid)
                    cx, cy, w, h = (
                        float(cx) * width,
                        float(cy) * height,
                        float(w) * width,
                        float(h) * height,
                    )
                except (ValueError, IndexError):
                    problems.append((f"{label_path}:{number}", f"bad YOLO row {line!r}"))
                    continue
                box = clipping.check(
                    [[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]],
                    [names[cid]],
                    size,
                    f"{label_path}:{number}",
                    problems,
                )
                ids.append(cid)
                boxes.append(box[0].tolist())
        found = Detections(np.asarray(boxes, np.float32).reshape(-1, 4), np.ones(len(ids)), ids)
        samples.append(
            Sample(str(image_path.relative_to(root)), sorted(set(found.labels(names))), split, found)
        )
    if problems:
        raise DatasetError(f"{root}: bad YOLO labels", problems)
    if not samples:
        raise DatasetError(f"{images_root}: no images found")
    manifest = Manifest("detection", list(names), samples, root, None, root.name)
    manifest.notes = clipping.notes()
    return manifest


def import_mvtec(root: str | Path, val: float = 0.1, seed: int = 0) -> Manifest:
    """MVTec AD layout: ROOT/train/good/*.png, ROOT/test/<defect or good>/*.png and
    ROOT/ground_truth/<defect>/<name>_mask.png, as most anomaly data sets ship.

    An anomaly manifest with good class "good": train is train/good less a seeded `val` share of
    it (the good parts a threshold is calibrated on without defects), test is all of test/. A
    defect image without a mask keeps its image label only.
    """
    root = Path(root)
    train_good, test_root = root / "train" / "good", root / "test"
    if not train_good.is_dir() or not test_root.is_dir():
        raise DatasetError(f"{root}: not the MVTec AD layout (needs train/good/ and test/<defect>/)")
    good = [Sample(str(p.relative_to(root)), ["good"]) for p in _images_in(train_good)]
    if not good:
        raise DatasetError(f"{train_good}: no images")
    assign_splits(Manifest("anomaly", ["good"], good, root, "good"), test=0.0, val=val, seed=seed)
    test = []
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        for image in _images_in(folder):
            mask = None
            if folder.name != "good":
                mask = _mask_beside(
                    root / "ground_truth" / folder.name / image.relative_to(folder).parent, image.stem
                )
            test.append(
                Sample(
                    str(image.relative_to(root)),
                    [folder.name],
                    "test",
                    mask=None if mask is None else str(mask.relative_to(root)),
                )
            )
    defects = sorted({s.labels[0] for s in test} - {"good"})
    return Manifest("anomaly", ["good", *defects], good + test, root, "good", root.name)


def import_yolo_seg(root: str | Path, masks: str | Path, classes: list[str] | None = None) -> Manifest:
    """YOLO segmentation: ROOT/images/**/x.jpg with ROOT/labels/**/x.txt, one polygon a line
    (`class x1 y1 x2 y2 ...`, normalised), as KolektorSDD ships. An empty or missing label file
    is a good part.

    The polygons are rasterised into PNG masks under `masks` (mirroring images/), which must lie
    outside ROOT: a source data set is read in place, never written to. Class names come from
    `classes`, ROOT/classes.txt or data.yaml, else the single class "defect". An anomaly
    manifest: labels "good" or the image's polygon classes; images/train|val|test set the split.
    """
    root, masks = Path(root), Path(masks)
    images_root, labels_root = root / "images", root / "labels"
    if not images_root.is_dir():
        raise DatasetError(f"{root}: no images/ folder")
    if masks.resolve().is_relative_to(root.resolve()):
        raise DatasetError(
            f"{masks}: the mask folder is inside the source data set {root}; name one outside it"
        )
    try:
        names = classes or _yolo_names(root)
    except DatasetError:
        names = ["defect"]  # single-class sets such as KolektorSDD name no classes
    if "good" in names:
        raise DatasetError(f"{root}: a defect class may not be called 'good' (the good parts' label)")
    problems: list[tuple[str, str]] = []
    samples = []
    for image_path, rel, split in _split_tree(images_root):
        label_path = (labels_root / rel).with_suffix(".txt")
        ids, polygons = set(), []
        lines = label_path.read_text().splitlines() if label_path.exists() else []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                cid, *coords = line.split()
                points = np.array(coords, np.float64).reshape(-1, 2)
                if not 0 <= int(cid) < len(names) or len(points) < 3:
                    raise ValueError(cid)
            except ValueError:
                problems.append((f"{label_path}:{number}", "bad polygon row (class x1 y1 x2 y2 x3 y3 ...)"))
                continue
            ids.add(int(cid))
            polygons.append(points)
        mask = None
        if polygons:
            image = cv2.imread(str(image_path), cv2.IMREAD_UNCHANGED)
            if image is None:
                problems.append((str(image_path), "unreadable image"))
                continue
            height, width = image.shape[:2]
            mask = (masks / rel).with_suffix(".png")
            mask.parent.mkdir(parents=True, exist_ok=True)
            pixels = rasterise([p * (width, height) for p in polygons], height, width)
            if not cv2.imwrite(str(mask), pixels):
                raise DatasetError(f"{mask}: cannot write the mask")
        labels = sorted(names[i] for i in ids) or ["good"]
        path = str(image_path.relative_to(root))
        samples.append(Sample(path, labels, split, mask=None if mask is None else str(mask.resolve())))
    if problems:
        raise DatasetError(f"{root}: bad YOLO polygon labels", problems)
    if not samples:
        raise DatasetError(f"{images_root}: no images found")
    return Manifest("anomaly", ["good", *names], samples, root, "good", root.name)


def import_mask_folders(root: str | Path) -> Manifest:
    """Mask folders beside image folders: ROOT/images/**/x.png with ROOT/masks/**/x.png (or
    x_mask.png), the same relative path. A part is defective when its mask has a defect pixel;
    an image without a mask is good. images/train|val|test set the split. An anomaly manifest,
    classes "good" and "defect".
    """
    root = Path(root)
    images_root, masks_root = root / "images", root / "masks"
    if not images_root.is_dir() or not masks_root.is_dir():
        raise DatasetError(f"{root}: needs images/ and masks/ folders side by side")
    problems: list[tuple[str, str]] = []
    samples = []
    for image_path, rel, split in _split_tree(images_root):
        mask_path = _mask_beside(masks_root / rel.parent, rel.stem)
        label = "good"
        if mask_path is not None:
            mask = read_mask(mask_path)
            if isinstance(mask, str):
                problems.append((str(mask_path), mask))
                continue
            label = "defect" if mask.any() else "good"
        mask_rel = None if mask_path is None else str(mask_path.relative_to(root))
        samples.append(Sample(str(image_path.relative_to(root)), [label], split, mask=mask_rel))
    if problems:
        raise DatasetError(f"{masks_root}: unusable masks", problems)
    if not samples:
        raise DatasetError(f"{images_root}: no images found")
    return Manifest("anomaly", ["good", "defect"], samples, root, "good", root.name)


def _mask_beside(folder: Path, stem: str, names: tuple[str, ...] | None = None) -> Path | None:
    """The mask of image `stem` in `folder`: <stem>_mask.<ext> or <stem>.<ext> (or `names`), or None."""
    for name in names or (f"{stem}{MASK_SUFFIX}", stem):
        for suffix in sorted(IMAGE_SUFFIXES):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    return None


def _yolo_names(root: Path) -> list[str]:
    if (root / "classes.txt").is_file():
        return [n.strip() for n in (root / "classes.txt").read_text().splitlines() if n.strip()]
    if (root / "data.yaml").is_file():
        import yaml

        names = yaml.safe_load((root / "data.yaml").read_text()).get("names")
        if isinstance(names, dict):
            return [names[k] for k in sorted(names)]
        if isinstance(names, list):
            return [str(n) for n in names]
    raise DatasetError(f"{root}: class names not found (classes.txt or data.yaml `names:`)")


def _first_dir(root: Path, *names: str) -> Path:
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DatasetError(f"{root}: none of the folders {names} exist")


def _class_list(given: list[str] | None, found: list[str], where: Path) -> list[str]:
    if given is None:
        return found
    unknown = sorted(set(found) - set(given))
    if unknown:
        raise DatasetError(f"{where}: labels {unknown} are not among the given classes {given}")
    return list(given)


IMPORTERS = {
    "folders": import_folders,
    "elpv": import_elpv,
    "voc": import_voc,
    "coco": import_coco,
    "yolo": import_yolo,
    "yolo-seg": import_yolo_seg,
    "mvtec": import_mvtec,
    "masks": import_mask_folders,
}


def import_dataset(
    fmt: str,
    source: str | Path | None = None,
    images: str | Path | None = None,
    masks: str | Path | None = None,
    val: float = 0.1,
    seed: int = 0,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    fold_classes: str | None = None,
) -> Manifest:
    """The manifest of `source` read by the importer of `fmt` (a key of IMPORTERS).

    The one place that knows each importer's arguments (ELPV needs no source, COCO and VOC may
    name an images folder, YOLO polygons need a folder to write masks to, MVTec splits its good
    training parts with `val` and `seed`, folders take globs and class folding), so the command
    line and tests import the same way. An option the format does not take is an error naming
    it, never silently ignored.
    """
    if fmt not in IMPORTERS:
        raise DatasetError(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    given = {
        "--images": (images, ("coco", "voc")),
        "--masks": (masks, ("yolo-seg",)),
        "--include": (include, ("folders",)),
        "--exclude": (exclude, ("folders",)),
        "--fold-classes": (fold_classes, ("folders",)),
    }
    for option, (value, formats) in given.items():
        if value and fmt not in formats:
            raise DatasetError(f"{option} applies to format {' and '.join(formats)} only, not {fmt}")
    if fmt == "elpv":
        return import_elpv(source) if source else import_elpv()
    if source is None:
        raise DatasetError(f"format {fmt} needs a SOURCE folder or file")
    if fmt in ("coco", "voc") and images:
        return IMPORTERS[fmt](source, images)
    if fmt == "yolo-seg":
        if masks is None:
            raise DatasetError("format yolo-seg needs --masks DIR: where to write the rasterised masks")
        return import_yolo_seg(source, masks)
    if fmt == "mvtec":
        return import_mvtec(source, val, seed)
    if fmt == "folders":
        return import_folders(source, include=include, exclude=exclude, fold_classes=fold_classes)
    return IMPORTERS[fmt](source)
