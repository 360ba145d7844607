"""The registry of tasks: one object per task name, implementing `Task` (tasks/base.py)."""

from __future__ import annotations

from zerodefect.training.tasks.anomaly import Anomaly
from zerodefect.training.tasks.base import Calibration, EvalRequest, FitJob, ParityReport, Split, Task
from zerodefect.training.tasks.classification import Classification
from zerodefect.training.tasks.detection import Detection

TASKS: dict[str, Task] = {"classification": Classification(), "detection": Detection(), "anomaly": Anomaly()}

__all__ = ["TASKS", "Calibration", "EvalRequest", "FitJob", "ParityReport", "Split", "Task", "get_task"]


def get_task(name: str) -> Task:
    """The task called `name`, or a ValueError naming the tasks there are."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
