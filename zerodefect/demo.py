"""`make demo`: the main job on ELPV with embedded defaults (SQLite MLflow, local files)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from zerodefect.settings import get_settings


def run_demo(config: Path, console: Console) -> None:
    """Import ELPV, train a short schedule, evaluate the bundle, register and promote it."""
    from zerodefect.training.config import load_config
    from zerodefect.training.evaluate import write_report
    from zerodefect.training.pipeline import run_training
    from zerodefect.training.registry import promote

    settings = get_settings()
    cfg = load_config(config)
    console.rule("zerodefect demo: ELPV solar cells")
    outcome = run_training(cfg, config, console=console)
    report = outcome.report
    json_path = write_report(report, outcome.run_dir / "eval" / "report.json")
    if outcome.model_name:
        gate = promote(outcome.model_name, outcome.version)
        status = "promoted to @champion" if gate.promoted else "kept as @challenger (gate failed)"
    else:
        status = "not registered"
    console.rule("demo results (test split)")
    console.print(
        f"accuracy {report['accuracy']:.4f} (at 0.5: {report['at_threshold_0.5']['accuracy']:.4f})  "
        f"AUROC {report['auroc']:.4f}  F1 {report['f1']:.4f}\n"
        f"threshold {report['threshold']:.4f} (val escape target {cfg.calibration.target_escape_rate}): "
        f"escape rate {report['escape_rate']:.4f}, false-reject rate {report['false_reject_rate']:.4f}"
    )
    for key, groups in report.get("groups", {}).items():
        for name, g in groups.items():
            console.print(
                f"  {key}={name}: n={g['n']} accuracy {g['accuracy']:.4f} AUROC {g['auroc']:.4f} "
                f"escape {g['escape_rate']:.4f} false reject {g['false_reject_rate']:.4f}"
            )
    console.print(
        f"\nbundle:      {outcome.bundle_dir}\n"
        f"report:      {json_path}\n"
        f"plots:       {outcome.run_dir / 'eval'} (roc.png, pr.png, confusion.png)\n"
        f"MLflow:      {settings.tracking_uri}  run {outcome.run_id}\n"
        f"model:       models:/{outcome.model_name}@challenger = version {outcome.version}, {status}\n"
        f"browse runs: .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}"
    )
