"""The one report type of every task: a plant block, the task's headline metrics, the rest.

The plant acts on parts: every task reports how many it saw, how many were defective, how
many escaped and how many good ones were rejected, at which threshold(s). The CLI printer, the
promotion gate, MLflow logging, the demo and `evaluate --json` read this type; its JSON keeps
the names of the reports committed under docs/results/, so old reports stay readable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from zerodefect.formatting import fmt_rate


@dataclass
class Plant:
    """What the line sees at the operating threshold(s): the block every task's report shares."""

    n: int
    defective: int
    escapes: int
    false_rejects: int
    escape_rate: float | None
    false_reject_rate: float | None
    # One threshold per class for detectors; {"threshold": t} for a single-score task.
    thresholds: dict[str, float]
    notes: list[str] = field(default_factory=list)

    @property
    def good(self) -> int:
        return self.n - self.defective


@dataclass
class Report:
    """A bundle's evaluation on one split.

    `data` is the report as written to JSON (today's keys, task's naming); `plant` and
    `headline` are its typed view, filled by the task that made it.
    """

    task: str
    plant: Plant
    headline: dict[str, float | None]
    data: dict[str, Any]

    def metric(self, name: str) -> float | None:
        """A headline metric or a plant rate by its JSON name (the gate's and MLflow's view)."""
        if name in self.headline:
            return self.headline[name]
        return getattr(self.plant, name)

    @property
    def escape_rate(self) -> float | None:
        return self.plant.escape_rate

    @property
    def false_reject_rate(self) -> float | None:
        return self.plant.false_reject_rate

    def to_json(self) -> dict[str, Any]:
        return {**self.data, "task": self.task}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """Read a report written by `write_report` (a missing `task` is an old classifier's)."""
        from zerodefect.training.tasks import get_task

        return get_task(data.get("task", "classification")).report_from_json(data)


def binary_plant(data: dict[str, Any]) -> Plant:
    """The plant block of a single-score report (training.metrics.binary_report's keys): the
    classifier's and the anomaly model's."""
    (_, fp), (fn, _) = data["confusion"]["matrix"]
    return Plant(
        n=int(data["n"]),
        defective=int(data["defective"]),
        escapes=int(fn),
        false_rejects=int(fp),
        escape_rate=data["escape_rate"],
        false_reject_rate=data["false_reject_rate"],
        thresholds={"threshold": data["threshold"]},
        notes=list(data.get("notes", [])),
    )


def write_report(report: Report, path: Path) -> Path:
    """The report's JSON file, with the calibrated operating point as its own block (derived
    from the plant block: a reader that knows only the old keys loses nothing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {**report.to_json(), "operating_point": operating_point(report)}
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


# Why the report leads with the calibrated operating point: one line, printed under it.
ACCURACY_AT_05 = (
    "accuracy at 0.5 misleads on imbalanced data: when few parts are defective, passing nearly "
    "everything scores high accuracy while most defects escape; the line runs at the threshold "
    "calibrated on val for the target escape rate"
)

# Rows the operating-point block shows, left out of the task's metric table below it.
_OPERATING_ROWS = ("escape_rate", "false_reject_rate", "threshold")


def operating_point(report: Report) -> dict[str, Any]:
    """The calibrated operating point every report leads with: the threshold(s) the line runs
    at, the escape and false-reject rates there (with their counts), the escape-rate target it
    was calibrated for, and why not accuracy at 0.5 when the report has that figure."""
    plant = report.plant
    point: dict[str, Any] = {
        "thresholds": dict(plant.thresholds),
        "target_escape_rate": report.data.get("target_escape_rate"),
        "escape_rate": plant.escape_rate,
        "escapes": plant.escapes,
        "defective": plant.defective,
        "false_reject_rate": plant.false_reject_rate,
        "false_rejects": plant.false_rejects,
        "good": plant.good,
    }
    if "at_threshold_0.5" in report.data:
        point["why_not_accuracy_at_0.5"] = ACCURACY_AT_05
    return point


def print_report(report: Report, console: Console) -> None:
    """The report as tables: first the calibrated operating point (threshold, escape and
    false-reject rates, and why not accuracy at 0.5), then the task's metric rows (accuracy at
    0.5 last), latency and training time, its own extra tables (per group, per class), then
    the notes that qualify the rates."""
    from zerodefect.training.tasks import get_task

    task = get_task(report.task)
    data = report.data
    point = operating_point(report)
    title = f"{data.get('model')} on {data.get('manifest')}/{data.get('split')}"
    lead = Table("operating point", "value", title=f"{title}: at the calibrated threshold")
    for name, value in point["thresholds"].items():
        lead.add_row(name, f"{value:.4f}")
    if point["target_escape_rate"] is not None:
        lead.add_row("target escape rate", fmt_rate(point["target_escape_rate"]))
    lead.add_row(
        "escape rate", f"{fmt_rate(point['escape_rate'])} ({point['escapes']}/{point['defective']} defective)"
    )
    lead.add_row(
        "false-reject rate",
        f"{fmt_rate(point['false_reject_rate'])} ({point['false_rejects']}/{point['good']} good)",
    )
    console.print(lead)
    if "why_not_accuracy_at_0.5" in point:
        console.print(f"why: {point['why_not_accuracy_at_0.5']}", soft_wrap=True)
    table = Table("metric", "test", title=title)
    for label, value in task.summary_rows(report):
        if label not in _OPERATING_ROWS:
            table.add_row(label, fmt_rate(value))
    table.add_row("ms per image, 1 core", fmt_rate(data.get("ms_per_image_1core"), 1))
    if "training_minutes" in data:
        table.add_row("training minutes", fmt_rate(data.get("training_minutes"), 1))
    console.print(table)
    for extra in task.detail_tables(report):
        console.print(extra)
    for note in report.plant.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
