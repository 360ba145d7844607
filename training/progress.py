"""Progress for long work: a live bar on a terminal, plain timed lines everywhere else.

rich draws its live bar only on a terminal; under nohup, CI or `> train.log` it prints nothing
until the work ends (a user waited 11.5 minutes for the first line). Without a terminal,
`PlainProgress` logs a line at the first step, then every `every_seconds`, and at the end:
done/total, the task's info (the loss), steps per second and the ETA.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

DEFAULT_EVERY_SECONDS = 20.0


@dataclass
class _Task:
    description: str
    total: float
    info: str = ""
    completed: float = 0.0
    started: float = field(default_factory=time.monotonic)
    last_line: float | None = None
    done: bool = False


class PlainProgress:
    """The part of rich's Progress this project uses, as plain lines for logs without a terminal."""

    def __init__(self, console: Console, every_seconds: float = DEFAULT_EVERY_SECONDS):
        self.console = console
        self.every_seconds = every_seconds
        self._tasks: dict[int, _Task] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        for task in self._tasks.values():
            if not task.done and task.completed:
                self._line(task)

    def add_task(self, description: str, total: float | None = None, info: str = "", **_: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = _Task(description, float(total or 0), info)
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(
        self,
        task_id: int,
        advance: float | None = None,
        completed: float | None = None,
        info: str | None = None,
        **_: Any,
    ) -> None:
        task = self._tasks[task_id]
        if advance:
            task.completed += advance
        if completed is not None:
            task.completed = completed
        if info is not None:
            task.info = info
        now = time.monotonic()
        finished = task.total and task.completed >= task.total
        due = task.last_line is None or now - task.last_line >= self.every_seconds
        if (finished and not task.done) or (due and task.completed):
            self._line(task)
            task.done = bool(finished)

    def _line(self, task: _Task) -> None:
        now = time.monotonic()
        task.last_line = now
        elapsed = max(now - task.started, 1e-9)
        rate = task.completed / elapsed
        parts = [f"{task.description}: {task.completed:.0f}/{task.total:.0f}"]
        if task.total:
            parts.append(f"({task.completed / task.total:.0%})")
        if task.info:
            parts.append(task.info)
        parts.append(f"{rate:.2f}/s")
        if task.total and rate > 0:
            remaining = max(task.total - task.completed, 0) / rate
            parts.append(
                f"elapsed {timedelta(seconds=round(elapsed))} ETA {timedelta(seconds=round(remaining))}"
            )
        self.console.print(" ".join(parts), highlight=False, soft_wrap=True)


def progress_bar(console: Console, every_seconds: float = DEFAULT_EVERY_SECONDS) -> Progress | PlainProgress:
    """A live bar on a terminal; timed plain lines when output goes to a file or a pipe."""
    if not console.is_terminal:
        return PlainProgress(console, every_seconds)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
