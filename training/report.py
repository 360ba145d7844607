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
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=2, sort_keys=True) + "\n")
    return path


def print_report(report: Report, console: Console) -> None:
    """The report as tables: the task's metric rows, latency and training time, its own extra
    tables (per group, per class), then the notes that qualify the rates."""
    from zerodefect.training.tasks import get_task

    task = get_task(report.task)
    data = report.data
    table = Table(
        "metric", "test", title=f"{data.get('model')} on {data.get('manifest')}/{data.get('split')}"
    )
    for label, value in task.summary_rows(report):
        table.add_row(label, fmt_rate(value))
    table.add_row("ms per image, 1 core", fmt_rate(data.get("ms_per_image_1core"), 1))
    if "training_minutes" in data:
        table.add_row("training minutes", fmt_rate(data.get("training_minutes"), 1))
    console.print(table)
    for extra in task.detail_tables(report):
        console.print(extra)
    for note in report.plant.notes:
        console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
