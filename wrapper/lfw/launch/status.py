"""`lfw status`: where a run stands, from manifest.json and each stage's trainer_log.jsonl.

Reads only files lfw and LLaMA-Factory write anyway (no torch, no process to attach to), so it works while the
run is going, after it finished or failed, and on another machine that sees the run directory. LLaMA-Factory's
LogCallback appends one record per logging step (loss, lr, remaining_time, and with
include_num_input_tokens_seen a `throughput` in tokens/s) and one per evaluation (eval_loss).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.launch.progress import LOG_NAME, read_trainer_log
from lfw.launch.runner import MANIFEST, newest_run


@dataclass(frozen=True)
class Evaluation:
    """One evaluation on the held-out data (val_size): perplexity is exp(eval_loss), per token."""

    step: int | None
    epoch: float | None
    eval_loss: float
    perplexity: float


@dataclass
class StageStatus:
    name: str
    status: str
    seconds: float | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    elapsed: str | None = None
    eta: str | None = None
    tokens_per_second: float | None = None
    total_tokens: int | None = None
    gpu_memory_gib: float | None = None  # peak reserved, logged by LF when RECORD_VRAM=1
    accuracy: float | None = None  # DPO: rewards/accuracies
    evaluations: list[Evaluation] = field(default_factory=list)

    @property
    def last_eval(self) -> Evaluation | None:
        return self.evaluations[-1] if self.evaluations else None


@dataclass
class RunStatus:
    run_dir: Path
    recipe: str | None
    status: str
    created: str | None
    finished: str | None
    stages: list[StageStatus]
    steps: list[dict[str, Any]] = field(default_factory=list)  # after training: name, status, seconds

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


def find_run(path: Path) -> Path:
    """`path` itself when it is a run directory, else the newest run directory inside it (a recipe's run folder)."""
    if (path / MANIFEST).is_file():
        return path
    if not path.is_dir():
        raise UserError([Problem(str(path), "no such folder", "give a run directory, e.g. runs/<name>/<timestamp>")])
    newest = newest_run(path)
    if newest is None:
        raise UserError(
            [
                Problem(
                    str(path),
                    f"no {MANIFEST} here nor in any folder inside: not an lfw run directory",
                    "give a run directory (runs/<name>/<timestamp>) or a recipe's run folder (runs/<name>)",
                )
            ]
        )
    return newest


def _number(record: dict[str, Any], key: str) -> float | None:
    value = record.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def fold_log(stage: StageStatus, entries: list[dict[str, Any]]) -> StageStatus:
    """Fold trainer_log.jsonl records into `stage`: each field keeps its newest value."""
    for entry in entries:
        if isinstance(entry.get("current_steps"), int):
            stage.step = entry["current_steps"]
        if isinstance(entry.get("total_steps"), int):
            stage.total_steps = entry["total_steps"]
        stage.epoch = _number(entry, "epoch") if "epoch" in entry else stage.epoch
        eval_loss = _number(entry, "eval_loss")
        if eval_loss is not None:
            stage.evaluations.append(
                Evaluation(entry.get("current_steps"), stage.epoch, eval_loss, _perplexity(eval_loss))
            )
        for attr, key in (
            ("loss", "loss"),
            ("learning_rate", "lr"),
            ("tokens_per_second", "throughput"),
            ("gpu_memory_gib", "vram_reserved"),
            ("accuracy", "accuracy"),
        ):
            value = _number(entry, key)
            if value is not None:
                setattr(stage, attr, value)
        if isinstance(entry.get("total_tokens"), int):
            stage.total_tokens = entry["total_tokens"]
        if entry.get("elapsed_time"):
            stage.elapsed = str(entry["elapsed_time"])
        if entry.get("remaining_time"):
            stage.eta = str(entry["remaining_time"])
    return stage


def stage_status(record: dict[str, Any]) -> StageStatus:
    """One stage of the manifest, with what its trainer_log.jsonl says (nothing yet before the first log)."""
    stage = StageStatus(name=str(record.get("name")), status=str(record.get("status", "unknown")))
    stage.seconds = _number(record, "seconds")
    output_dir = record.get("output_dir")
    fold_log(stage, read_trainer_log(Path(output_dir) / LOG_NAME) if output_dir else [])
    if stage.status != "running":
        stage.eta = None  # LF's remaining time means nothing once the stage stopped
    return stage


def describe_progress(stage: StageStatus) -> str:
    """What training says so far (step, loss, lr, ETA, tokens/s, memory, eval), for `lfw status` and `lfw run`."""
    parts = []
    if stage.step is not None:
        parts.append(f"step {stage.step}/{stage.total_steps if stage.total_steps is not None else '?'}")
    if stage.epoch is not None:
        parts.append(f"epoch {stage.epoch:.2f}")
    if stage.loss is not None:
        parts.append(f"loss {stage.loss:.4f}")
    if stage.learning_rate is not None:
        parts.append(f"lr {stage.learning_rate:.2e}")
    if stage.accuracy is not None:
        parts.append(f"reward accuracy {stage.accuracy:.2f}")
    if stage.eta:
        parts.append(f"eta {stage.eta}")
    if stage.tokens_per_second is not None:
        parts.append(f"{stage.tokens_per_second:,.0f} tokens/s")
    if stage.gpu_memory_gib is not None:
        parts.append(f"GPU {stage.gpu_memory_gib:.2f} GiB reserved")
    if stage.last_eval is not None:
        parts.append(f"eval loss {stage.last_eval.eval_loss:.4f} (perplexity {stage.last_eval.perplexity:.2f})")
    return "  ".join(parts)


def describe_stage(stage: StageStatus) -> str:
    """One line per stage, with only what is known (a stage that has not logged yet shows its status alone)."""
    parts = [stage.name, stage.status, describe_progress(stage)]
    if stage.seconds is not None:
        parts.append(f"{stage.seconds:.0f} s")
    elif stage.elapsed:
        parts.append(f"elapsed {stage.elapsed}")
    return "  ".join(p for p in parts if p)


def run_status(path: Path) -> RunStatus:
    """The status of the run at `path` (or of the newest run in a recipe's run folder)."""
    run_dir = find_run(path)
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(
            [Problem(str(run_dir / MANIFEST), f"unreadable: {err}", "is it an lfw run directory?")]
        ) from None
    return RunStatus(
        run_dir=run_dir,
        recipe=(manifest.get("recipe") or {}).get("path"),
        status=str(manifest.get("status", "unknown")),
        created=manifest.get("created"),
        finished=manifest.get("finished"),
        stages=[stage_status(record) for record in manifest.get("stages", [])],
        steps=[
            {"name": step.get("name"), "status": step.get("status", "pending"), "seconds": _number(step, "seconds")}
            for step in manifest.get("steps", [])
        ],
    )
