"""`zerodefect datasets`: import labeled images into a manifest, export reviews, validate."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from zerodefect.cli.root import console, fail, user_errors
from zerodefect.settings import get_settings

datasets_app = typer.Typer(
    help="Import labeled images into a manifest, split and validate them.", no_args_is_help=True
)


@datasets_app.command("import")
def datasets_import(
    fmt: Annotated[
        str,
        typer.Argument(
            metavar="FORMAT", help="folders | elpv | voc | coco | yolo | yolo-seg | mvtec | masks"
        ),
    ],
    source: Annotated[
        Path | None, typer.Argument(help="Folder, or COCO JSON file. Not needed for elpv.")
    ] = None,
    masks: Annotated[
        Path | None, typer.Option(help="yolo-seg: folder to write the rasterised masks to (outside SOURCE).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Manifest file to write (.jsonl).")] = Path("manifest.jsonl"),
    images: Annotated[Path | None, typer.Option(help="Images folder (COCO, or VOC when not found).")] = None,
    test: Annotated[float, typer.Option(help="Share of each stratum for the test split.")] = 0.2,
    val: Annotated[
        float, typer.Option(help="Share of each stratum for the val split (mvtec: of train/good).")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    stratify_on: Annotated[
        list[str] | None, typer.Option(help="Metadata keys to stratify on, besides labels.")
    ] = None,
    keep_splits: Annotated[bool, typer.Option(help="Keep splits the source already defines.")] = True,
    split_file: Annotated[
        Path | None,
        typer.Option(
            help="CSV (split,image) giving every image its split, e.g. a committed one; overrides the fractions."
        ),
    ] = None,
) -> None:
    """Import a labeled image set into a manifest, with deterministic stratified splits."""
    from zerodefect.datasets.importers import import_dataset
    from zerodefect.datasets.splits import apply_split_file, assign_splits
    from zerodefect.datasets.validate import validate

    try:
        manifest = import_dataset(fmt, source, images, masks, val, seed)
        if split_file is not None:
            apply_split_file(manifest, split_file)
        else:
            assign_splits(manifest, test, val, seed, stratify_on or [], keep_existing=keep_splits)
        report = validate(manifest)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    manifest.write(out)
    console.print(f"wrote {out}: {report.images} images, dataset hash {report.dataset_hash[:16]}")
    _print_counts(report.counts)


@datasets_app.command("from-reviews")
def datasets_from_reviews(
    out: Annotated[Path, typer.Option(help="Manifest to write (JSON Lines).")],
    task: Annotated[
        str, typer.Option(help="classification, detection or anomaly: what the manifest trains.")
    ] = "classification",
    good_class: Annotated[str, typer.Option(help="Class name of a good part (classifiers).")] = "good",
    model: Annotated[str | None, typer.Option(help="Only parts judged by this registered model.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only reviews from this time on (ISO 8601).")] = None,
) -> None:
    """Export reviewed parts from the quality record as a manifest, labelled by their reviews.

    Train on it with: zerodefect train CONFIG --extra-data OUT
    """
    from zerodefect.quality.db import record_session
    from zerodefect.quality.images import ImageStore
    from zerodefect.quality.reviews_export import manifest_from_reviews
    from zerodefect.training.tasks import TASKS

    if task not in TASKS:
        raise fail(f"--task must be {' or '.join(TASKS)}, not {task!r}")
    settings = get_settings()
    with record_session(settings.record_database_url) as session:
        # An anomaly manifest's masks (regions reviewers drew) go in a folder beside it.
        export = manifest_from_reviews(
            session,
            ImageStore(settings.image_dir),
            task,
            good_class,
            model,
            since,
            out.with_name(f"{out.stem}-masks"),
        )
    if not export.manifest.samples:
        raise fail("no reviewed parts with stored images match; nothing written")
    path = export.manifest.write(out)
    console.print(f"{len(export.manifest.samples)} reviewed parts -> {path}  {export.manifest.counts()}")
    for reason, count in export.skipped.items():
        console.print(f"skipped {count}: {reason}")
    if export.unmasked:
        console.print(f"{export.unmasked} defective parts without a drawn region: image label only, no mask")


@datasets_app.command("validate")
def datasets_validate(
    manifest: Annotated[Path, typer.Argument(help="Manifest file (.jsonl).")],
) -> None:
    """Open every image of a manifest and list every problem (missing, corrupt, bad label or box)."""
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.datasets.validate import validate

    try:
        report = validate(Manifest.read(manifest))
    except user_errors() as exc:
        raise fail(str(exc)) from None
    console.print(f"{manifest}: OK, {report.images} images, dataset hash {report.dataset_hash}")
    _print_counts(report.counts)


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    table = Table("split", "label", "images")
    for split, labels in counts.items():
        for label, n in labels.items():
            table.add_row(split, label, str(n))
    console.print(table)
