"""The MLflow run of a training: opened with the run's inputs, per-epoch metrics while it
trains, the failure reason when it collapses, test metrics and the registered bundle at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console

from zerodefect.formatting import fmt_rate
from zerodefect.settings import Settings
from zerodefect.training.config import Config
from zerodefect.training.health import Preflight, TrainingFailed, check_run
from zerodefect.training.progress import progress_bar
from zerodefect.training.report import Report
from zerodefect.training.runs import run_id_of
from zerodefect.training.tasks import Task


@contextmanager
def epoch_progress(
    console: Console, epochs: int, steps_per_epoch: int, every_seconds: float = 20.0
) -> Iterator[tuple[Any, Any]]:
    """A training progress bar (timed plain lines without a terminal); yields (on_batch,
    on_epoch) callbacks for `fit`. Each epoch's validation metrics are printed and logged to
    the active MLflow run."""
    import mlflow

    with progress_bar(console, every_seconds) as progress:
        task = progress.add_task("training", total=epochs * steps_per_epoch, info="")
        state = {"loss": None}

        def on_batch(loss: float) -> None:
            state["loss"] = loss if state["loss"] is None else 0.9 * state["loss"] + 0.1 * loss
            progress.update(task, advance=1, info=f"loss {state['loss']:.4f}")

        def on_epoch(row: dict[str, Any]) -> None:
            shown = "  ".join(
                f"{k} {v:.4f}"
                for k, v in row.items()
                if k not in ("epoch", "seconds", "lr") and v is not None
            )
            progress.console.print(f"epoch {row['epoch']:>3}  {shown}  {row['seconds']:.0f}s")
            progress.update(task, completed=row["epoch"] * steps_per_epoch)
            mlflow.log_metrics(
                {k: v for k, v in row.items() if k != "epoch" and v is not None}, step=row["epoch"]
            )

        yield on_batch, on_epoch


def start_mlflow_run(
    cfg: Config,
    run_dir: Path,
    check,
    settings: Settings,
    config_path: Path | None,
    extra_data: Path | None,
    weights,
    processes: int = 1,
):
    """Start (or, for a resumed run folder, reopen) the run's MLflow run and log its inputs;
    `processes` is the number of DDP processes training it (tag `processes`)."""
    import mlflow

    from zerodefect.settings import configure_mlflow
    from zerodefect.training.registry import experiment_id, flatten
    from zerodefect.training.train import select_device

    configure_mlflow(settings)
    existing = run_id_of(run_dir)
    run = mlflow.start_run(
        run_id=existing,
        experiment_id=None if existing else experiment_id(cfg.mlflow.experiment, settings),
        run_name=f"{cfg.name}-{run_dir.name}",
    )
    (run_dir / "mlflow_run_id").write_text(run.info.run_id)
    if existing:
        return run
    try:
        mlflow.log_params({k: str(v)[:500] for k, v in flatten(cfg.model_dump(mode="json")).items()})
        mlflow.set_tags(
            {
                "dataset_hash": check.dataset_hash,
                "manifest": str(cfg.data.manifest.resolve()),
                "task": cfg.task,
                "config": str(config_path or ""),
                "extra_data": str(extra_data or ""),
                "device": str(select_device(cfg.train.device)),
                "processes": str(processes),
                "pretrained_tensors": str(weights.matched if weights else 0),
            }
        )
        mlflow.log_text(json.dumps(check.counts, indent=2), "dataset/counts.json")
        mlflow.log_artifact(str(run_dir / "manifest.jsonl"), "dataset")
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    return run


def refuse_failed_run(cfg: Config, result, pre: Preflight, run_dir: Path) -> None:
    """Stop a collapsed run before export and registration (TrainingFailed), leaving its files
    and a failure.json in the run folder, and the reason on its MLflow run."""
    import mlflow

    try:
        check_run(cfg, result, pre, run_dir)
    except TrainingFailed as exc:
        (run_dir / "failure.json").write_text(
            json.dumps(
                {"what": exc.what, "causes": exc.causes, "history": result.history}, indent=2, default=str
            )
        )
        mlflow.set_tag("failure", exc.what[:500])
        mlflow.log_text(str(exc), "failure.txt")
        raise


def log_test_metrics(task: Task, report: Report, training_seconds: float) -> None:
    """The test report's numbers on the MLflow run: headline, plant rates, latency, the task's own.

    Undefined rates (no denominator) are left out of MLflow, never logged as 0."""
    import mlflow

    metrics: dict[str, float | None] = {f"test_{k}": v for k, v in report.headline.items()}
    metrics.update(
        {
            "test_escape_rate": report.escape_rate,
            "test_false_reject_rate": report.false_reject_rate,
            "training_minutes": training_seconds / 60,
            "ms_per_image_1core": report.data.get("ms_per_image_1core"),
            **task.run_metrics(report),
        }
    )
    mlflow.log_metrics({k: v for k, v in metrics.items() if v is not None})


def register(cfg: Config, task: Task, run_id: str, check, report: Report, console: Console) -> str | None:
    """Register the run's logged bundle under the config's alias, tagged with its test headline."""
    from zerodefect.training.registry import register_bundle

    if not cfg.mlflow.registered_model:
        return None
    headline = task.headline_metric
    version = register_bundle(
        run_id,
        cfg.mlflow.registered_model,
        cfg.mlflow.alias,
        {
            "dataset_hash": check.dataset_hash,
            "manifest": str(cfg.data.manifest.resolve()),
            f"test_{headline}": fmt_rate(report.metric(headline)),
            "test_escape_rate": fmt_rate(report.escape_rate),
        },
    )
    console.print(
        f"registered [bold]{cfg.mlflow.registered_model}[/] version {version} as @{cfg.mlflow.alias}"
    )
    return version
