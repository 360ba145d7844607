"""The manifest: one JSON Lines file that every trainer reads.

Line 1 is a header (format version, task, class names, image root); every further line is one
image: path, split, labels, optional boxes, an optional defect mask and free metadata (cell type,
serial, station...). JSON Lines because rows carry nested boxes, stay diff-able, and stream
without a schema tool.

A sample's boxes are a `Detections` (the one box type of zerodefect) over the manifest's class
list; on disk they stay `[{"label": name, "box": [xmin, ymin, xmax, ymax]}]`.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from zerodefect.inference.result import Detections

FORMAT_VERSION = 1
# The metadata key that keeps a folded class's original name (`import_folders(fold_classes=)`),
# for per-type splits and reports.
FOLDED_KEY = "defect_type"
TASKS = ("classification", "detection", "anomaly")
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be used, with every offending file listed."""

    def __init__(self, message: str, problems: list[tuple[str, str]] | None = None):
        self.problems = problems or []
        lines = [message] + [f"  {path}: {problem}" for path, problem in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"  ... and {len(self.problems) - 50} more")
        super().__init__("\n".join(lines))


@dataclass
class Sample:
    """One image. `labels` are image-level class names; a detection image's labels are the
    classes of its boxes (empty for a clean part). `boxes` are in the image's own pixels, their
    class ids index the manifest's `classes` (score 1)."""

    path: str
    labels: list[str] = field(default_factory=list)
    split: str | None = None
    boxes: Detections = field(default_factory=Detections.empty)
    meta: dict[str, Any] = field(default_factory=dict)
    # A defect mask (same size as the image, 0 = good, >0 = defect), relative like `path`:
    # the truth of anomaly tasks' pixel metrics. None: no mask (a good part, or not annotated).
    mask: str | None = None

    @property
    def label(self) -> str | None:
        """The single label of a classification sample."""
        return self.labels[0] if self.labels else None

    def to_json(self, classes: Sequence[str]) -> dict[str, Any]:
        """The manifest row; `classes` are the manifest's (what the box class ids index)."""
        row: dict[str, Any] = {"path": self.path, "split": self.split, "labels": self.labels}
        if len(self.boxes):
            row["boxes"] = self.boxes.to_manifest(classes)
        if self.meta:
            row["meta"] = self.meta
        if self.mask is not None:
            row["mask"] = self.mask
        return row

    @classmethod
    def from_json(cls, row: dict[str, Any], classes: Sequence[str]) -> Sample:
        """A manifest row; a box whose label is not in `classes` is refused by name."""
        return cls(
            path=str(row["path"]),
            labels=[str(x) for x in row.get("labels", [])],
            split=row.get("split"),
            boxes=Detections.from_manifest(row.get("boxes", []), classes),
            meta=dict(row.get("meta", {})),
            mask=None if row.get("mask") is None else str(row["mask"]),
        )


@dataclass
class Manifest:
    """A labeled image set. `good_class` names the class that means a good part (if any)."""

    task: str
    classes: list[str]
    samples: list[Sample]
    root: Path = Path(".")
    good_class: str | None = None
    name: str = "dataset"
    # What the import did that the user should hear about (boxes clipped, masks attached, val
    # carved out of train...): printed by `datasets import`, never written to the file.
    notes: list[str] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DatasetError(f"unknown task {self.task!r}; expected one of {TASKS}")
        if self.good_class is not None and self.good_class not in self.classes:
            raise DatasetError(f"good class {self.good_class!r} is not among {self.classes}")

    def resolve(self, sample: Sample) -> Path:
        path = Path(sample.path)
        return path if path.is_absolute() else self.root / path

    def resolve_mask(self, sample: Sample) -> Path | None:
        """The sample's mask file, or None when it has none."""
        if sample.mask is None:
            return None
        path = Path(sample.mask)
        return path if path.is_absolute() else self.root / path

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def defect_classes(self) -> list[str]:
        return [c for c in self.classes if c != self.good_class]

    def is_defective(self, sample: Sample) -> bool:
        """Plant view of a sample, for every task: defective when it has a box or any label
        that is not the good class."""
        return len(sample.boxes) > 0 or any(lab != self.good_class for lab in sample.labels)

    def counts(self) -> dict[str, dict[str, int]]:
        """Images per split and label, for logs and reports."""
        out: dict[str, Counter[str]] = {}
        for s in self.samples:
            out.setdefault(s.split or "unassigned", Counter()).update(s.labels or ["(none)"])
        return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}

    def header(self) -> dict[str, Any]:
        return {
            "zerodefect_manifest": FORMAT_VERSION,
            "name": self.name,
            "task": self.task,
            "classes": self.classes,
            "good_class": self.good_class,
            "root": str(self.root),
        }

    def write(self, path: str | Path) -> Path:
        """Write the manifest; a relative root is stored relative to the manifest's folder."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = self.header()
        root = self.root.resolve()
        try:
            header["root"] = str(root.relative_to(path.parent.resolve()))
        except ValueError:
            header["root"] = str(root)
        with path.open("w", encoding="utf-8") as fh:
            fh.write(json.dumps(header) + "\n")
            for s in self.samples:
                fh.write(json.dumps(s.to_json(self.classes)) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(f"{path}: manifest not found")
        lines = path.read_text(encoding="utf-8").splitlines()
        problems: list[tuple[str, str]] = []
        try:
            header = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: line 1 is not JSON ({exc})") from exc
        if header.get("zerodefect_manifest") != FORMAT_VERSION:
            raise DatasetError(f"{path}: not a zerodefect manifest (version {FORMAT_VERSION})")
        classes = [str(c) for c in header.get("classes", [])]
        samples = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                samples.append(Sample.from_json(json.loads(line), classes))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                problems.append((f"{path}:{number}", f"bad row ({exc})"))
        if problems:
            raise DatasetError(f"{path}: {len(problems)} unreadable rows", problems)
        root = Path(header.get("root", "."))
        if not root.is_absolute():
            root = path.parent / root
        return cls(
            task=header["task"],
            classes=classes,
            samples=samples,
            root=root,
            good_class=header.get("good_class"),
            name=header.get("name", path.stem),
        )

    def merged(self, other: Manifest) -> Manifest:
        """This manifest plus another one's samples (paths made absolute), e.g. reviewed images.

        The other manifest's classes must be known here: a relabel cannot invent a class the
        model has no output for.
        """
        unknown = sorted(set(other.classes) - set(self.classes))
        if unknown:
            raise DatasetError(f"extra data has classes unknown to {self.name}: {unknown}")
        extra = [
            replace(
                s,
                path=str(other.resolve(s).resolve()),
                labels=list(s.labels),
                split=s.split or "train",
                boxes=Detections.from_labels(s.boxes.labels(other.classes), s.boxes.xyxy, self.classes),
                meta=dict(s.meta),
                mask=_absolute(other.resolve_mask(s)),
            )
            for s in other.samples
        ]
        own = [
            replace(s, path=str(self.resolve(s).resolve()), mask=_absolute(self.resolve_mask(s)))
            for s in self.samples
        ]
        return Manifest(self.task, self.classes, own + extra, Path("/"), self.good_class, self.name)


def _absolute(path: Path | None) -> str | None:
    return None if path is None else str(path.resolve())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
