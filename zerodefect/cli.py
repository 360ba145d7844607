"""The `zerodefect` command line: datasets, train, evaluate, export, models, demo.

Heavy libraries (torch, mlflow) are imported inside the commands that need them, so `--help`
is instant and an edge install without torch can still run the commands it has.
"""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from zerodefect.formatting import fmt_rate
from zerodefect.settings import get_settings, prepare_process_environment

app = typer.Typer(
    help="zerodefect: train defect models, export verified ONNX bundles, and version them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
datasets_app = typer.Typer(
    help="Import labeled images into a manifest, split and validate them.", no_args_is_help=True
)
models_app = typer.Typer(help="Registered model versions and their aliases (MLflow).", no_args_is_help=True)
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")
serve_app = typer.Typer(
    help="Run the services: the station (edge) and the quality record.", no_args_is_help=True
)
record_app = typer.Typer(
    help="Administer the quality record: lines, stations, API keys.", no_args_is_help=True
)
users_app = typer.Typer(help="People of the review app and their roles.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")
app.add_typer(record_app, name="record")
app.add_typer(users_app, name="users")
keys_app = typer.Typer(help="Ed25519 keys that sign model bundles.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
# Lines are never broken at 80 columns: in a log file a wrapped path or number cannot be found.
console = Console(soft_wrap=True)


@app.callback()
def main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    prepare_process_environment()
    if console.is_terminal:
        handler: logging.Handler = RichHandler(console=console, show_path=False, rich_tracebacks=True)
        fmt = "%(message)s"
    else:  # nohup, CI, a log file: one plain line per record, with its time and level
        handler = logging.StreamHandler(console.file)
        fmt = "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=fmt, handlers=[handler])
    for noisy in ("alembic", "mlflow", "urllib3", "matplotlib", "PIL", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str) -> typer.Exit:
    """Print a user error unwrapped (paths stay whole, brackets stay literal); exit code 2."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code=2)


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's input, reported as a message rather than a traceback."""
    from zerodefect.datasets.augment import AugmentationError
    from zerodefect.datasets.manifest import DatasetError
    from zerodefect.inference.preprocess import ImageDecodeError
    from zerodefect.models.bundle import BundleError

    errors: list[type[Exception]] = [DatasetError, BundleError, ImageDecodeError, AugmentationError]
    try:
        from zerodefect.training.config import ConfigError

        errors.append(ConfigError)
    except ImportError:
        pass
    return tuple(errors)


@datasets_app.command("import")
def datasets_import(
    fmt: Annotated[str, typer.Argument(metavar="FORMAT", help="folders | elpv | voc | coco | yolo")],
    source: Annotated[
        Path | None, typer.Argument(help="Folder, or COCO JSON file. Not needed for elpv.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Manifest file to write (.jsonl).")] = Path("manifest.jsonl"),
    images: Annotated[Path | None, typer.Option(help="Images folder (COCO, or VOC when not found).")] = None,
    test: Annotated[float, typer.Option(help="Share of each stratum for the test split.")] = 0.2,
    val: Annotated[float, typer.Option(help="Share of each stratum for the val split.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    stratify_on: Annotated[
        list[str] | None, typer.Option(help="Metadata keys to stratify on, besides labels.")
    ] = None,
    keep_splits: Annotated[bool, typer.Option(help="Keep splits the source already defines.")] = True,
) -> None:
    """Import a labeled image set into a manifest, with deterministic stratified splits."""
    from zerodefect.datasets.importers import IMPORTERS
    from zerodefect.datasets.splits import assign_splits
    from zerodefect.datasets.validate import validate

    if fmt not in IMPORTERS:
        raise fail(f"unknown format {fmt!r}; choose one of {', '.join(IMPORTERS)}")
    if fmt != "elpv" and source is None:
        raise fail(f"format {fmt} needs a SOURCE folder or file")
    try:
        if fmt == "elpv":
            manifest = IMPORTERS[fmt](source) if source else IMPORTERS[fmt]()
        elif fmt in ("coco", "voc"):
            manifest = IMPORTERS[fmt](source, images) if images else IMPORTERS[fmt](source)
        else:
            manifest = IMPORTERS[fmt](source)
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
    task: Annotated[str, typer.Option(help="classification or detection: what the manifest trains.")] = (
        "classification"
    ),
    good_class: Annotated[str, typer.Option(help="Class name of a good part (classifiers).")] = "good",
    model: Annotated[str | None, typer.Option(help="Only parts judged by this registered model.")] = None,
    since: Annotated[datetime | None, typer.Option(help="Only reviews from this time on (ISO 8601).")] = None,
) -> None:
    """Export reviewed parts from the quality record as a manifest, labelled by their reviews.

    Train on it with: zerodefect train CONFIG --extra-data OUT
    """
    from zerodefect.quality.db import make_engine, migrate, session_factory
    from zerodefect.quality.images import ImageStore
    from zerodefect.quality.reviews_export import manifest_from_reviews
    from zerodefect.training.tasks import TASKS

    if task not in TASKS:
        raise fail(f"--task must be {' or '.join(TASKS)}, not {task!r}")
    settings = get_settings()
    migrate(settings.record_database_url)
    with session_factory(make_engine(settings.record_database_url))() as session:
        export = manifest_from_reviews(
            session, ImageStore(settings.image_dir), task, good_class, model, since
        )
    if not export.manifest.samples:
        raise fail("no reviewed parts with stored images match; nothing written")
    path = export.manifest.write(out)
    console.print(f"{len(export.manifest.samples)} reviewed parts -> {path}  {export.manifest.counts()}")
    for reason, count in export.skipped.items():
        console.print(f"skipped {count}: {reason}")


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


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML training config, e.g. configs/elpv-classifier.yaml.")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key: train.epochs=3.")
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the newest unfinished run of this config.")] = False,
    resume_dir: Annotated[Path | None, typer.Option(help="Continue this run folder.")] = None,
    extra_data: Annotated[
        Path | None, typer.Option(help="Another manifest to add (e.g. from reviews).")
    ] = None,
) -> None:
    """Train, calibrate the threshold on val, export a verified bundle, evaluate on test, register.

    Before the first step it prints a pre-flight summary (steps per epoch, warm-up, EMA
    half-life, smallest box) with warnings. A run that collapses (best val AUROC <= 0.55 or
    mAP@0.5 < 0.05, a NaN or diverging loss, or an early stop at epoch 1 under the gate's floor)
    exits with code 3 and the likely causes; it registers nothing and never moves @challenger.

    Without a terminal (nohup, CI, a log file) progress is a plain line every
    train.log_every_seconds (20). On a machine shared with other work, train.threads=1 or the
    default OMP_WAIT_POLICY=PASSIVE keeps training from stalling (README, "Training").
    """
    from zerodefect.training.config import load_config
    from zerodefect.training.export import ExportParityError
    from zerodefect.training.health import TrainingFailed
    from zerodefect.training.pipeline import run_training
    from zerodefect.training.report import print_report

    try:
        cfg = load_config(config, set_)
        outcome = run_training(cfg, config, resume_dir or resume, extra_data, console=console)
    except (*user_errors(), ExportParityError) as exc:
        raise fail(str(exc)) from None
    except TrainingFailed as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(code=3) from None
    print_report(outcome.report, console)
    console.print(
        f"bundle:  {outcome.bundle_dir}\nreport:  {outcome.report_path}\nMLflow run: {outcome.run_id}"
    )


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A training run folder (var/runs/NAME/STAMP).")],
    out: Annotated[Path | None, typer.Option(help="Bundle folder (default: RUN_DIR/bundle).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override the run's config: export.tta=dihedral.")
    ] = None,
) -> None:
    """Export a run's best weights as a verified ONNX bundle, recalibrating the threshold on val.

    The bundle is written only if ONNX Runtime reproduces PyTorch on the validation images.
    """
    from zerodefect.training.export import ExportParityError
    from zerodefect.training.pipeline import export_run

    try:
        bundle = export_run(run_dir, out, set_, console)
    except (*user_errors(), ExportParityError) as exc:
        raise fail(str(exc)) from None
    console.print(f"bundle: {bundle}")


@app.command()
def evaluate(
    bundle: Annotated[str, typer.Argument(help="Bundle folder, or models:/NAME@ALIAS.")],
    manifest: Annotated[Path, typer.Option(help="Manifest with the labeled images.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the machine-readable report here.")
    ] = None,
    plots: Annotated[
        Path | None,
        typer.Option(
            help="Folder for the plots. Classifiers: roc.png, pr.png, confusion.png and scores.npz. "
            "Detectors: pr_curves.png (per class) and samples-*.png sheets (true boxes green, "
            "predicted red, with a legend)."
        ),
    ] = None,
    group_by: Annotated[list[str] | None, typer.Option(help="Metadata keys to break down by.")] = None,
    baseline: Annotated[
        str | None, typer.Option(help="Another bundle to compare with (e.g. the fp32 one of an INT8 bundle).")
    ] = None,
) -> None:
    """Evaluate a bundle through ONNX Runtime at its calibrated threshold: escapes and false rejects.

    With --baseline, the report also gives each metric's change against that bundle on the same images.
    """
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.source import fetch_bundle
    from zerodefect.training.evaluate import compare_reports, evaluate_bundle
    from zerodefect.training.report import print_report, write_report

    try:
        folder = fetch_bundle(bundle, get_settings().data_dir / "registry-cache")
        data = Manifest.read(manifest)
        report = evaluate_bundle(folder, data, split, group_by or None, plots)
        if baseline:
            base = evaluate_bundle(
                fetch_bundle(baseline, get_settings().data_dir / "registry-cache"), data, split, []
            )
            report.data["versus_baseline"] = compare_reports(report, base, baseline)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    print_report(report, console)
    for metric, row in report.data.get("versus_baseline", {}).get("metrics", {}).items():
        delta = "n/a" if row["delta"] is None else f"{row['delta']:+.4f}"
        console.print(f"{metric}: {fmt_rate(row['this'])} vs baseline {fmt_rate(row['baseline'])} ({delta})")
    if json_path:
        console.print(f"report: {write_report(report, json_path)}")


@models_app.command("list")
def models_list(name: Annotated[str, typer.Argument(help="Registered model name.")]) -> None:
    """List versions with their aliases and test metrics."""
    import mlflow

    from zerodefect.settings import configure_mlflow

    configure_mlflow()
    client = mlflow.MlflowClient()
    try:
        model = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        raise fail(f"no registered model {name!r}") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in model.aliases.items():
        aliases.setdefault(str(version), []).append(alias)
    table = Table("version", "aliases", "test AUROC / mAP@0.5", "test escape", "run", title=name)
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        table.add_row(
            str(v.version),
            ", ".join(aliases.get(str(v.version), [])),
            v.tags.get("test_auroc", v.tags.get("test_map50", "-")),
            v.tags.get("test_escape_rate", "-"),
            v.run_id or "-",
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str | None, typer.Option(help="Version to promote (default: @challenger).")] = None,
    force: Annotated[
        bool,
        typer.Option(help="Promote even if the gate fails; needs --reason (kept in MLflow and the record)."),
    ] = False,
    reason: Annotated[str | None, typer.Option(help="Why a --force promotion must happen.")] = None,
    tolerance: Annotated[float, typer.Option(help="Allowed worsening per gate metric.")] = 0.005,
    manifest: Annotated[
        Path | None, typer.Option(help="Manifest for the gate (default: the challenger's).")
    ] = None,
) -> None:
    """Move @champion to the challenger if it passes the gate on the test split.

    The gate needs both: the absolute floors of the config's `gate:` section (defaults: AUROC
    >= 0.75 or mAP@0.5 >= 0.30, escape rate <= 0.20, false-reject rate <= 0.50 at the
    calibrated threshold), which hold even when there is no champion; and, when a champion
    exists, no metric worse than the champion's by more than --tolerance on the same split.
    Every promotion is written to the quality record (GET /v1/model-promotions).
    """
    from zerodefect.settings import configure_mlflow
    from zerodefect.training.registry import promote

    configure_mlflow()
    try:
        result = promote(name, version, force, tolerance, manifest, reason=reason)
    except (*user_errors(), ValueError) as exc:
        raise fail(str(exc)) from None
    _print_gate(name, result)
    if not result.promoted:
        raise typer.Exit(code=1)


def _print_gate(name: str, result) -> None:
    table = Table(
        "metric",
        f"challenger v{result.challenger}",
        f"champion {'v' + result.champion if result.champion else '(none)'}",
        "floor",
        "ok",
        "note",
        title=f"promotion gate ({result.split} split of {result.manifest})",
    )
    for row in result.rows:
        table.add_row(
            row.metric,
            fmt_rate(row.challenger),
            fmt_rate(row.champion),
            f"{'>=' if row.higher_is_better else '<='} {row.floor:g}",
            "yes" if row.ok else "[red]no[/]",
            row.note,
        )
    console.print(table)
    if result.promoted:
        how = (
            f"[yellow]FORCED over a failed gate: {escape(result.reason or '')}[/]"
            if result.forced
            else "gate passed"
        )
        console.print(f"{name} v{result.challenger} is now @champion ({how})", soft_wrap=True)
        if not result.recorded:
            console.print("[red]the promotion was not written to the quality record (see the log)[/]")
    else:
        why = "; ".join(f"{r.metric} {r.note}" for r in result.failures)
        console.print(f"[red]{name} v{result.challenger} not promoted: {escape(why)}[/]", soft_wrap=True)


@app.command()
def demo(
    config: Annotated[Path, typer.Option(help="Demo training config.")] = Path("configs/elpv-demo.yaml"),
    station: Annotated[Path, typer.Option(help="Station config the line runs.")] = Path(
        "configs/station.yaml"
    ),
    rate: Annotated[float, typer.Option(help="Line speed of the simulator, parts per minute.")] = 1200.0,
    cameras: Annotated[int, typer.Option(help="Concurrent cameras in the simulator.")] = 2,
) -> None:
    """The main job on ELPV, end to end.

    Import, train a short schedule, evaluate, export, register and promote; then start the quality
    record (left running), serve the champion at an edge station and play the test split through
    it with the line simulator, printing verdicts, observed escape and false-reject rates, and the
    record API's URL.
    """
    from zerodefect.demo import run_demo
    from zerodefect.training.health import TrainingFailed

    try:
        run_demo(config, console, station, rate, cameras)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    except TrainingFailed as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(code=3) from None


@serve_app.command("record")
def serve_record(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8100,
) -> None:
    """Serve the quality record API (database from ZD_RECORD_URL, default SQLite in var/)."""
    import uvicorn

    from zerodefect.quality.app import create_app

    uvicorn.run(create_app(), host=host, port=port, log_level="info")


@serve_app.command("edge")
def serve_edge(
    config: Annotated[Path, typer.Option(help="Station config YAML, e.g. configs/station.yaml.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8200,
    model: Annotated[
        str | None, typer.Option(help="Override the config's model (path or models:/NAME@ALIAS).")
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(
            help="Pull mode: a video file, image folder, rtsp:// or http:// stream, or a USB device number."
        ),
    ] = None,
    serial_prefix: Annotated[
        str, typer.Option(help="Pull mode: serials are PREFIX-<frame number>.")
    ] = "PART",
) -> None:
    """Serve a station: POST /v1/inspect, /healthz, /readyz, /metrics, and the OpenAPI description at /docs.

    With --source, frames are also pulled from a camera or file and judged as they come.
    """
    import uvicorn

    from zerodefect.edge.app import create_app
    from zerodefect.edge.config import StationConfigError, load_station_config

    try:
        cfg = load_station_config(config, {"model": model} if model else None)
    except StationConfigError as exc:
        raise fail(str(exc)) from None
    app = create_app(cfg, source, serial_prefix)
    uvicorn.run(app, host=host, port=port, log_level="info")


@users_app.command("create")
def users_create(
    username: Annotated[str, typer.Argument(help="Login name.")],
    role: Annotated[
        str, typer.Option(help="viewer (read), reviewer (review parts) or admin (users, stations).")
    ],
    password_env: Annotated[
        str | None,
        typer.Option(help="Read the password from this environment variable instead of a prompt."),
    ] = None,
) -> None:
    """Create a user of the review app (the first admin comes from here)."""
    import os

    from zerodefect.quality.auth import AuthError, create_user
    from zerodefect.quality.db import make_engine, migrate, session_factory

    if password_env:
        password = os.environ.get(password_env)
        if not password:
            raise fail(f"environment variable {password_env} is empty or not set")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    url = get_settings().record_database_url
    migrate(url)
    with session_factory(make_engine(url))() as session:
        try:
            user = create_user(session, username, password, role)
        except AuthError as exc:
            raise fail(str(exc)) from None
    console.print(f"user {user.username} created with role {user.role}")


@record_app.command("add-station")
def record_add_station(
    name: Annotated[str, typer.Argument(help="Station name, e.g. line1-st01.")],
    line: Annotated[str | None, typer.Option(help="Line the station belongs to.")] = None,
) -> None:
    """Create a station and print its API key (shown once; only its hash is stored)."""
    from zerodefect.quality.db import make_engine, migrate, session_factory
    from zerodefect.quality.store import RecordError, add_station

    url = get_settings().record_database_url
    migrate(url)
    with session_factory(make_engine(url))() as session:
        try:
            station, key = add_station(session, name, line)
        except RecordError as exc:
            raise fail(str(exc)) from None
    console.print(f"station {station.name} created; API key (store it now, it is not shown again):")
    print(key)


@record_app.command("rotate-key")
def record_rotate_key(name: Annotated[str, typer.Argument(help="Existing station name.")]) -> None:
    """Give a station a new API key (printed once); its old key is refused from now on."""
    from zerodefect.quality.db import make_engine, migrate, session_factory
    from zerodefect.quality.store import RecordError, rotate_station_key

    url = get_settings().record_database_url
    migrate(url)
    with session_factory(make_engine(url))() as session:
        try:
            key = rotate_station_key(session, name)
        except RecordError as exc:
            raise fail(str(exc)) from None
    console.print(f"station {name}: new API key (store it now, it is not shown again):")
    print(key)


@keys_app.command("new")
def keys_new(
    out: Annotated[Path, typer.Option(help="Folder for NAME.key (private, mode 0600) and NAME.pub.")],
    name: Annotated[str, typer.Option(help="File name of the pair.")] = "bundle-signing",
) -> None:
    """Make a bundle-signing key pair: training signs with NAME.key (ZD_SIGNING_KEY), stations
    list NAME.pub (or its base64 line) in trusted_keys."""
    from zerodefect.models.signing import (
        SigningKeyError,
        key_id,
        public_key_b64,
        read_private_key,
        write_key_pair,
    )

    try:
        private, public = write_key_pair(out, name)
    except SigningKeyError as exc:
        raise fail(str(exc)) from None
    key = read_private_key(private)
    console.print(f"private key {private} (id {key_id(key)}): export ZD_SIGNING_KEY={private}")
    console.print(f"public key  {public}: add it (or the line below) to each station's trusted_keys")
    print(public_key_b64(key))


@keys_app.command("sign")
def keys_sign(bundle: Annotated[Path, typer.Argument(help="A bundle folder.")]) -> None:
    """Sign a bundle with the configured key (ZD_SIGNING_KEY, else the data dir's): for bundles
    made before signing, which stations refuse. Sign only bundles you vouch for."""
    from zerodefect.models.bundle import load_bundle
    from zerodefect.models.signing import sign_bundle

    try:
        load_bundle(bundle)  # a model that does not match its sha256 is not signed
        record = sign_bundle(bundle)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    console.print(f"{bundle}: signed by key {record['key_id']} ({len(record['files'])} files)")


@app.command("new-key")
def new_key() -> None:
    """Make an API key for a station's own endpoints: prints the key, then the sha256 for its config."""
    import hashlib
    import secrets

    key = "zd_" + secrets.token_urlsafe(32)
    print(key)
    print(hashlib.sha256(key.encode()).hexdigest())


@app.command()
def simulate(
    url: Annotated[str, typer.Option(help="The edge service, e.g. http://127.0.0.1:8200.")],
    station: Annotated[str, typer.Option(help="Station name the edge serves.")],
    api_key: Annotated[
        str, typer.Option(envvar="ZD_EDGE_API_KEY", help="Edge API key (or ZD_EDGE_API_KEY).")
    ],
    folder: Annotated[Path | None, typer.Option(help="Play every image in this folder.")] = None,
    manifest: Annotated[
        Path | None, typer.Option(help="Play a manifest split (labels give escape rates).")
    ] = None,
    split: Annotated[str, typer.Option(help="Manifest split to play.")] = "test",
    rate: Annotated[float, typer.Option(help="Parts per minute (0: as fast as the station answers).")] = 600,
    cameras: Annotated[int, typer.Option(help="Concurrent cameras.")] = 1,
) -> None:
    """Play images to a station at the line's rate and report verdicts, escapes and false rejects."""
    from zerodefect.edge.simulator import parts_from_folder, parts_from_manifest, play

    if (folder is None) == (manifest is None):
        raise fail("give exactly one of --folder or --manifest")
    try:
        parts = parts_from_folder(folder) if folder else parts_from_manifest(manifest, split)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    tally = play(parts, url.rstrip("/"), api_key, station, rate or None, cameras)
    _print_tally(tally)


def _print_tally(tally) -> None:
    console.print(
        f"verdicts: {dict(tally.verdicts)}  fail-safe: {tally.failsafe}  model versions: {dict(tally.versions)}"
    )
    if tally.escape_rate is not None:
        console.print(
            f"observed escape rate {tally.escape_rate:.4f} ({tally.escapes}/{tally.defective} defective passed)"
        )
    if tally.false_reject_rate is not None:
        console.print(
            f"observed false-reject rate {tally.false_reject_rate:.4f} ({tally.false_rejects}/{tally.good} good rejected)"
        )
    if tally.errors:
        console.print(f"[red]refused: {dict(tally.errors)}[/]")


@app.command()
def quantize(
    bundle: Annotated[Path, typer.Argument(help="An fp32 bundle folder.")],
    manifest: Annotated[
        Path, typer.Option(help="Manifest: train images calibrate, val recalibrates the threshold.")
    ],
    out: Annotated[Path, typer.Option(help="Folder for the INT8 bundle.")],
    calibration_images: Annotated[int, typer.Option(help="Train images used for activation ranges.")] = 256,
) -> None:
    """Make a static INT8 (QDQ, per-channel) copy of a bundle; check its cost with `evaluate --baseline`."""
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.training.quantize import quantize_bundle

    try:
        folder = quantize_bundle(bundle, Manifest.read(manifest), out, calibration_images)
    except user_errors() as exc:
        raise fail(str(exc)) from None
    console.print(
        f"INT8 bundle: {folder}\ncheck its accuracy cost: zerodefect evaluate {folder} --manifest {manifest} --baseline {bundle}"
    )


def _reference_run(name: str) -> Path:
    runs = sorted((get_settings().data_dir / "runs" / name).glob("*/summary.json"))
    if not runs:
        raise fail(f"no finished run of {name!r} under {get_settings().data_dir / 'runs'}; train it first")
    return runs[-1].parent


@app.command()
def bench(
    run: Annotated[
        str, typer.Option(help="Training run name whose newest finished run is measured.")
    ] = "elpv-classifier",
    bundle: Annotated[
        Path | None,
        typer.Option(
            help="Bundle to serve (default: the run's own, or its single-view export when it has "
            "test-time augmentation, then its INT8 copy unless --no-int8)."
        ),
    ] = None,
    int8: Annotated[
        bool, typer.Option(help="Measure the run's static INT8 copy (made if missing); --no-int8 for fp32.")
    ] = True,
    seconds: Annotated[float, typer.Option(help="Seconds per load level.")] = 10.0,
    threads: Annotated[int, typer.Option(help="ONNX Runtime / torch threads (the station's cores).")] = 2,
    docs: Annotated[Path, typer.Option(help="Where benchmarks.md and results/edge-bench.json go.")] = Path(
        "docs"
    ),
    detector_run: Annotated[
        str,
        typer.Option(
            help="Detector training run whose newest finished bundle adds detector rows ('' to skip)."
        ),
    ] = "neu-det-detector",
) -> None:
    """Measure the station service against raw ONNX Runtime and an eager-PyTorch handler, in one run.

    When a finished detector run exists, its bundle is measured too, on its own test images."""
    from zerodefect.bench import measure_bundle, run_bench, write_reports
    from zerodefect.datasets.manifest import Manifest
    from zerodefect.inference.preprocess import decode_image, read_image
    from zerodefect.models.bundle import read_meta

    run_dir = _reference_run(run)
    manifest = Manifest.read(run_dir / "manifest.jsonl")
    images = [read_image(manifest.resolve(s)) for s in manifest.split("test")[:64]]
    if bundle is None:
        bundle = run_dir / "bundle"
        if read_meta(bundle).tta != "none":
            # Test-time augmentation multiplies the cost per part; a station at line rate serves
            # the single-view export of the same weights (its accuracy: docs/results/README.md).
            single = run_dir / "bundle-single-view"
            if not (single / "bundle.json").is_file():
                from zerodefect.training.pipeline import export_run

                export_run(run_dir, single, ["export.tta=none"], console)
            bundle = single
        if int8:
            # The production bundle when `evaluate --baseline` shows its cost within 0.5 points
            # (docs/results/README.md); measured as the station would serve it.
            quantized = run_dir / f"{bundle.name}-int8"
            if not (quantized / "bundle.json").is_file():
                from zerodefect.training.quantize import quantize_bundle

                quantize_bundle(bundle, manifest, quantized)
            bundle = quantized
    command = (
        f"make bench  # zerodefect bench --run {run} {'--int8' if int8 else '--no-int8'} "
        f"--seconds {seconds:g} --threads {threads}, which measured {bundle}"
    )
    result = run_bench(bundle, run_dir, images, get_settings().data_dir, threads, seconds, command=command)
    if detector_run:
        if not list((get_settings().data_dir / "runs" / detector_run).glob("*/summary.json")):
            console.print(f"no finished {detector_run} run: detector rows skipped")
        else:
            det_dir = _reference_run(detector_run)
            det_manifest = Manifest.read(det_dir / "manifest.jsonl")
            jpegs = [det_manifest.resolve(s).read_bytes() for s in det_manifest.split("test")[:64]]
            result["detector"] = measure_bundle(
                det_dir / "bundle",
                [decode_image(j) for j in jpegs],
                jpegs,
                get_settings().data_dir,
                threads,
                seconds,
                one_thread=True,
            )
            result["command"] += f"; detector rows: --detector-run {detector_run}"
    md, js = write_reports(result, docs)
    console.print(md.read_text())
    console.print(f"written: {md}, {js}")


@app.command("bench-eager-server", hidden=True)
def bench_eager_server(run_dir: Path, port: int = 8300, threads: int = 2, tta: str = "none") -> None:
    """Serve the eager-PyTorch baseline of `zerodefect bench` (C)."""
    import uvicorn

    from zerodefect.bench import eager_app

    uvicorn.run(eager_app(run_dir, threads, tta), host="127.0.0.1", port=port, log_level="warning")
