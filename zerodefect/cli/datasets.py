"""`zerodefect datasets`: import labeled images into a manifest, export reviews, validate."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
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
    test: Annotated[
        float | None,
        typer.Option(
            help="Share of each stratum for the test split (default 0.2). An error when SOURCE has its own test/."
        ),
    ] = None,
    val: Annotated[
        float | None,
        typer.Option(
            help="Share of each stratum for the val split (default 0.1; mvtec: of train/good). When SOURCE "
            "has train/ (and test/) folders but no val/, val is carved out of train."
        ),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Split seed (default 0).")] = None,
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
    include: Annotated[
        list[str] | None,
        typer.Option(help="folders: import only images matching this glob (repeatable), e.g. '*.jpg'."),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="folders: leave out images matching this glob (repeatable).")
    ] = None,
    fold_classes: Annotated[
        str | None,
        typer.Option(
            help="folders: fold every class but good into this one (e.g. defective); the original class "
            "is kept as meta defect_type for per-type reports."
        ),
    ] = None,
) -> None:
    """Import a labeled image set into a manifest, with deterministic stratified splits.

    folders: masks (<stem>_mask.*, masks/ or ground_truth/ trees) are attached to their images.
    """
    from zerodefect.datasets.importers import import_dataset
    from zerodefect.datasets.splits import DEFAULT_VAL, split_dataset
    from zerodefect.datasets.validate import validate

    try:
        manifest = import_dataset(
            fmt,
            source,
            images,
            masks,
            DEFAULT_VAL if val is None else val,
            seed or 0,
            include,
            exclude,
            fold_classes,
        )
        # MVTec's importer used --val and --seed on train/good; its splits are all set.
        consumed = fmt == "mvtec"
        notes = manifest.notes + split_dataset(
            manifest,
            test,
            None if consumed else val,
            None if consumed else seed,
            stratify_on or [],
            keep_splits,
            split_file,
        )
        report = validate(manifest)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    manifest.write(out)
    console.print(f"wrote {out}: {report.images} images, dataset hash {report.dataset_hash[:16]}")
    for note in notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
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


@datasets_app.command("inspect")
def datasets_inspect(
    target: Annotated[
        Path,
        typer.Argument(
            metavar="MANIFEST_OR_CONFIG", help="A manifest (.jsonl) or a training config (.yaml)."
        ),
    ],
    input_size: Annotated[
        int | None,
        typer.Option(
            help="Manifest: the model input side to measure boxes at (default 320). Configs carry their own."
        ),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Config: override a key, e.g. --set model.input_size=640 (repeatable)."),
    ] = None,
) -> None:
    """Class counts and image sizes; for detection, per-class box sizes in pixels and at the
    model's input size, with a suggested input size or tiling when defects shrink below ~8 px.

    A config's manifest is imported from its data.source first if it does not exist yet, as
    `zerodefect train` would.
    """
    from zerodefect.datasets.inspect import inspect_manifest
    from zerodefect.datasets.manifest import Manifest

    tile = None
    try:
        if target.suffix.lower() in (".yaml", ".yml"):
            if input_size is not None:
                raise fail(
                    f"--input-size applies to a manifest; for {target} use --set model.input_size={input_size}"
                )
            from zerodefect.training.config import load_config
            from zerodefect.training.runs import prepare_manifest

            cfg = load_config(target, overrides)
            manifest = prepare_manifest(cfg)
            input_hw = cfg.model.input_hw
            tiling = getattr(cfg.model, "tiling", None)  # model.tiling: {tile, overlap}, or None
            tile = getattr(tiling, "tile", None) if tiling is not None else None
        else:
            if overrides:
                raise fail(f"--set applies to a config; {target} is a manifest (use --input-size)")
            manifest = Manifest.read(target)
            side = 320 if input_size is None else input_size
            input_hw = (side, side)
        found = inspect_manifest(manifest, input_hw, tile)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    _print_inspection(found)


def _print_inspection(found) -> None:
    size = " x ".join(str(v) for v in reversed(found.input_hw))
    tiles = f", tiles of {found.tile} px" if found.tile else ""
    console.print(f"{found.name}: {found.task}, {found.images} images, model input {size} px{tiles}")
    sizes = ", ".join(f"{k} {w}x{h}" for k, (w, h) in found.sizes.items())
    console.print(f"image sizes (w x h): {sizes}; {found.distinct_sizes} distinct")
    if found.masks:
        console.print(f"{found.masks} images carry a defect mask")
    if found.unreadable:
        console.print(
            f"[red]{len(found.unreadable)} unreadable images[/], e.g. {escape(found.unreadable[0])}"
        )
    _print_counts(found.counts)
    if found.boxes:
        table = Table(
            "class",
            "boxes",
            "images",
            "median side px",
            "p10 side px",
            "median at input",
            "p10 at input",
            title="box sides (the shorter of width and height)",
        )
        for b in found.boxes:
            table.add_row(
                b.name,
                str(b.boxes),
                str(b.images),
                *(fmt_px(v) for v in (b.median_px, b.p10_px, b.median_at_input, b.p10_at_input)),
            )
        console.print(table)
    if found.suggestion:
        console.print(f"suggestion: {escape(found.suggestion)}", soft_wrap=True)


def fmt_px(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _print_counts(counts: dict[str, dict[str, int]]) -> None:
    table = Table("split", "label", "images")
    for split, labels in counts.items():
        for label, n in labels.items():
            table.add_row(split, label, str(n))
    console.print(table)
