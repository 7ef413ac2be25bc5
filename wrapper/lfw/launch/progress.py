"""Live training progress from LLaMA-Factory's trainer_log.jsonl (step/total, loss, ETA).

LLaMA-Factory appends one JSON line per logging step to <output_dir>/trainer_log.jsonl; reading that file
is cheaper and steadier than parsing its console output.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LOG_NAME = "trainer_log.jsonl"


def read_trainer_log(path: Path) -> list[dict[str, Any]]:
    """All complete records of a trainer_log.jsonl (a half-written last line is skipped)."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def describe(record: dict[str, Any]) -> str:
    """The live line for the newest trainer_log record, in `lfw status`'s words."""
    from lfw.launch.status import StageStatus, describe_progress, fold_log  # status reads logs with this module

    return describe_progress(fold_log(StageStatus("", "running"), [record]))


class TrainingProgress:
    """Polls trainer_log.jsonl in a thread and shows a bar on a terminal, plain lines elsewhere (CI logs)."""

    def __init__(self, log_path: Path, label: str, console: Console, interval: float = 1.0) -> None:
        self.log_path = log_path
        self.label = label
        self.console = console
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self.last: dict[str, Any] | None = None

    def __enter__(self) -> TrainingProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _poll(self) -> None:
        if not self.console.is_terminal:
            self._follow(lambda record: self.console.print(f"{self.label}: {describe(record)}", highlight=False))
            return
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=self.console) as bar:
            task = bar.add_task(self.label, total=None, info="starting")
            self._follow(
                lambda record: bar.update(
                    task,
                    completed=record.get("current_steps", 0),
                    total=record.get("total_steps"),
                    info=describe(record),
                )
            )

    def _follow(self, show: Callable[[dict[str, Any]], object]) -> None:
        """Show each new record until stopped, reading once more after the stop so the last step shows."""
        seen = 0
        while True:
            stopping = self._stop.wait(self.interval)
            records = read_trainer_log(self.log_path)
            for record in records[seen:]:
                show(record)
                self.last = record
            seen = len(records)
            if stopping:
                return
