"""What a data check returns: problems with stable codes, length statistics, one report per file or folder part.

`Sink` collects problems while rows stream past: exact counts, but a capped stored list, so a broken 1M-row file
stays cheap. `make_report` turns a sink into the `DataReport` that `lfw data check` prints and `lfw run` raises.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lfw.infra.errors import Problem, UserError

if TYPE_CHECKING:
    from lfw.preflight.data.layout import DataFormat

MAX_STORED_PROBLEMS = 2000  # problems kept per report; counts stay exact beyond it
LENGTH_NOTE = "approximate: ChatML wrapping, media counted as their tag text"


@dataclass(frozen=True)
class DataProblem(Problem):
    """A `Problem` with a severity and a stable code, so callers can filter and tests can assert."""

    severity: str = "error"  # "error" (LLaMA-Factory drops the row or crashes) or "warning"
    code: str = ""
    row: int | None = None
    line: int | None = None


@dataclass
class LengthStats:
    """Token lengths of the rendered rows; the basis for picking cutoff_len (seed 003's OOM ladder)."""

    count: int
    p50: int
    p90: int
    p95: int
    p99: int
    max: int
    mean: float
    suggested_cutoff_len: int  # covers 95% of rows, rounded up to 64 (<= 1024) or 128
    cutoff_len: int | None = None
    over_cutoff: int = 0  # rows longer than cutoff_len (LLaMA-Factory truncates them)
    note: str = LENGTH_NOTE


@dataclass
class DataReport:
    """Everything `lfw data check` found; `lfw run` calls `raise_for_errors()` before launching."""

    path: Path
    container: str  # json | jsonl | csv | parquet | arrow | text | rows | save_to_disk | folder | dataset_dir
    format: str | None  # recipe format name; "mixed" for a folder of differently shaped files
    rows: int
    problems: list[DataProblem] = field(default_factory=list)
    lengths: LengthStats | None = None
    data_format: DataFormat | None = None
    parts: list[DataReport] = field(default_factory=list)  # one per file or split of a folder
    skipped: list[str] = field(default_factory=list)
    error_count: int = 0  # exact, even where `problems` was capped at MAX_STORED_PROBLEMS
    warning_count: int = 0
    code_counts: dict[str, int] = field(default_factory=dict)
    raw_lengths: list[int] = field(default_factory=list, repr=False)  # per row, for merging folder parts

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def needs_conversion(self) -> bool:
        """True for `save_to_disk` folders: LLaMA-Factory cannot load them; see `convert_to_jsonl`."""
        return self.container == "save_to_disk"

    def raise_for_errors(self, limit: int = 20) -> None:
        """Raise one `UserError` listing the first `limit` errors, so a bad dataset never reaches a GPU."""
        if not self.error_count:
            return
        shown: list[Problem] = list(self.errors[:limit])
        if self.error_count > len(shown):
            more = self.error_count - len(shown)
            shown.append(Problem(str(self.path), f"... and {more} more errors", f"lfw data check {self.path}"))
        raise UserError(shown, title=f"{self.path}: {self.error_count} data error(s) in {self.rows} rows")


class Sink:
    """Collects problems: exact counts, but a capped stored list so a broken 1M-row file stays cheap."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[DataProblem] = []
        self.error_count = 0
        self.warning_count = 0
        self.codes: Counter[str] = Counter()

    def add(
        self,
        severity: str,
        code: str,
        message: str,
        fix: str = "",
        row: int | None = None,
        line: int | None = None,
    ) -> None:
        if severity == "error":
            self.error_count += 1
        else:
            self.warning_count += 1
        self.codes[code] += 1
        if len(self.problems) < MAX_STORED_PROBLEMS:
            self.problems.append(DataProblem(where(self.name, row, line), message, fix, severity, code, row, line))

    def extend(self, other: DataReport) -> None:
        self.error_count += other.error_count
        self.warning_count += other.warning_count
        self.codes.update(other.code_counts)
        room = MAX_STORED_PROBLEMS - len(self.problems)
        self.problems.extend(other.problems[: max(room, 0)])

    def raise_first(self, title: str = "", limit: int = 20) -> None:
        """Raise the stored problems as one `UserError` when there is an error (for callers that stop at one)."""
        if self.error_count:
            raise UserError(list(self.problems[:limit]), title=title)


def where(name: str, row: int | None, line: int | None) -> str:
    """`file row 3 (line 7)`: how every problem names its place."""
    text = name if row is None else f"{name} row {row}"
    return f"{text} (line {line})" if line is not None else text


def make_report(
    path: Path, container: str, fmt: str | None, rows: int, sink: Sink, data_format: DataFormat | None = None
) -> DataReport:
    """The report of one file or folder, errors listed before warnings."""
    order = {"error": 0, "warning": 1}
    problems = sorted(sink.problems, key=lambda p: order.get(p.severity, 2))  # stable: rows stay in order
    return DataReport(
        path=path,
        container=container,
        format=fmt,
        rows=rows,
        problems=problems,
        data_format=data_format,
        error_count=sink.error_count,
        warning_count=sink.warning_count,
        code_counts=dict(sink.codes),
    )
