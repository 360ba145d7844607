"""`zerodefect train / export / evaluate / quantize` and the printers of their reports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from zerodefect.cli.root import app, console, fail, user_errors
from zerodefect.formatting import fmt_rate
from zerodefect.settings import get_settings


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
    nproc: Annotated[
        int,
        typer.Option(
            min=1, help="Train with torch DDP in N processes per node (torchrun; gloo on CPU, NCCL on GPUs)."
        ),
    ] = 1,
    nnodes: Annotated[
        int, typer.Option(min=1, help="Nodes of a multi-node DDP run (same command on each).")
    ] = 1,
    node_rank: Annotated[int, typer.Option(min=0, help="This node's rank (0 on --master-addr).")] = 0,
    master_addr: Annotated[
        str | None, typer.Option(help="Address of the node of rank 0 (multi-node).")
    ] = None,
    master_port: Annotated[int, typer.Option(help="Rendezvous port on --master-addr (multi-node).")] = 29500,
) -> None:
    """Train, calibrate the threshold on val, export a verified bundle, evaluate on test, register.

    With --nproc N (and --nnodes/--node-rank/--master-addr for several machines) it runs
    through torchrun as N data-parallel processes per node: train.batch_size is the global
    batch, so the run matches one process; rank 0 alone logs, exports and registers (README,
    "Training on several processes or machines"). The anomaly task (one pass) is refused.

    Before the first step it prints a pre-flight summary (steps per epoch, warm-up, EMA
    half-life, smallest box) with warnings. A run that collapses (best val AUROC <= 0.55 or
    mAP@0.5 < 0.05, a NaN or diverging loss, or an early stop at epoch 1 under the gate's floor)
    exits with code 3 and the likely causes; it registers nothing and never moves @challenger.

    Without a terminal (nohup, CI, a log file) progress is a plain line every
    train.log_every_seconds (20). On a machine shared with other work, train.threads=1 or the
    default OMP_WAIT_POLICY=PASSIVE keeps training from stalling (README, "Training").
    """
    from zerodefect.training.config import load_config
    from zerodefect.training.distributed import check_config, launch, launched_by_torchrun, torchrun_args
    from zerodefect.training.export import ExportParityError
    from zerodefect.training.health import TrainingFailed
    from zerodefect.training.pipeline import run_training
    from zerodefect.training.report import print_report
    from zerodefect.training.tasks import get_task

    try:
        cfg = load_config(config, set_)
        if (nproc > 1 or nnodes > 1) and not launched_by_torchrun():
            check_config(get_task(cfg.task).one_pass, cfg.task, cfg.train.batch_size, nproc * nnodes)
            child = ["train", str(config), *(f"--set={s}" for s in set_ or [])]
            child += ["--resume"] if resume else []
            child += [f"--resume-dir={resume_dir}"] if resume_dir else []
            child += [f"--extra-data={extra_data}"] if extra_data else []
            args = torchrun_args(nproc, child, nnodes, node_rank, master_addr, master_port)
            console.print(f"torchrun {' '.join(args)}", highlight=False)
            raise typer.Exit(code=launch(args))
        outcome = run_training(cfg, config, resume_dir or resume, extra_data, console=console)
    except (*user_errors(), ExportParityError) as exc:
        raise fail(str(exc)) from None
    except TrainingFailed as exc:
        console.print(f"[bold red]{escape(str(exc))}[/]", soft_wrap=True)
        raise typer.Exit(code=3) from None
    if outcome is None:  # a DDP process other than rank 0: rank 0 reports
        return
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
