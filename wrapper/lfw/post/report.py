"""`lfw report`: one comparison of runs and evaluations — tables, loss curves, score charts.

Practitioners end a fine-tuning project with hand-written ``analyze_results.py`` / ``visualize_results.py``
scripts (seed 000). This does that job from what lfw already writes: run directories (``manifest.json``
plus each stage's LLaMA-Factory ``trainer_log.jsonl``) and `lfw eval` output (``<label>/summary.json``).

Output folder: ``report.md`` with the tables and the images next to it (``scores.png``,
``loss_<run>.png``), ``scores.csv`` (benchmark x model, with differences) and ``metrics.csv`` (every
metric, long format); the score table is also printed in the terminal. Models appear in the order given
(inside one eval folder: in the order they were evaluated), and differences are against the first model
(``--baseline`` picks another), so ``lfw report evals/base evals/sft evals/dpo`` reads base -> SFT -> DPO.

The folder is written whole beside its place and then moved there. It may be new, empty, or an earlier lfw
report (``.lfw-report.json`` lists its files and their hashes), which is then replaced completely, so no
image of an earlier report is left looking current; a folder holding anything else, or a report file edited
since, is refused.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lfw.infra.errors import Problem, UserError
from lfw.infra.owned import files_in, new_dir_beside, sha256_file, swap_in
from lfw.launch.progress import read_trainer_log

__all__ = ["Inputs", "collect", "build_report"]

MARKER = ".lfw-report.json"  # the files this report wrote, with their hashes


@dataclass
class RunInfo:
    """One `lfw run` directory: its name and, per stage, the trainer log records."""

    name: str
    path: Path
    status: str
    stages: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Inputs:
    runs: list[RunInfo] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read ({err})") from err
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _load_run(path: Path) -> RunInfo:
    manifest = _read_json(path / "manifest.json")
    recipe = manifest.get("recipe", {}).get("resolved", {}) or {}
    name = f"{recipe.get('name') or path.parent.name}/{path.name}"
    stages = []
    for stage in manifest.get("stages", []):
        output_dir = Path(stage.get("output_dir") or path / stage.get("name", ""))
        if not output_dir.is_dir():  # a run directory moved since: the stage folder sits beside the manifest
            output_dir = path / stage.get("name", "")
        records = read_trainer_log(output_dir / "trainer_log.jsonl")
        stages.append(
            {
                "name": stage.get("name", "?"),
                "status": stage.get("status", "?"),
                "seconds": stage.get("seconds"),
                "records": records,
            }
        )
    return RunInfo(name=name, path=path, status=manifest.get("status", "?"), stages=stages)


def _load_eval(path: Path) -> dict[str, Any]:
    summary = _read_json(path / "summary.json")
    if "benchmarks" not in summary:
        raise UserError(f"{path / 'summary.json'} is not an lfw eval summary")
    summary["_dir"] = str(path)
    return summary


def collect(dirs: list[str | Path]) -> Inputs:
    """Runs and evaluations found in each DIR: the folder itself, else its sub-folders, else theirs.

    So a run directory, a recipe's runs folder (runs/NAME), an eval output folder (OUT) or one model's
    results (OUT/base) all work.
    """
    found = Inputs()
    for raw in dirs:
        path = Path(raw)
        if not path.is_dir():
            raise UserError(f"{path} is not a folder (give run directories and eval output folders)")
        level = [path]
        hits = 0
        for _depth in range(3):
            runs = [p for p in level if (p / "manifest.json").is_file()]
            evals = [p for p in level if (p / "summary.json").is_file()]
            found.runs += [_load_run(p) for p in runs]
            batch = [_load_eval(p) for p in evals]
            found.evals += sorted(batch, key=lambda s: (s.get("created", ""), s.get("model", "")))
            hits += len(runs) + len(evals)
            if hits:
                break
            level = sorted(child for p in level for child in p.iterdir() if child.is_dir())
        if not hits:
            raise UserError(f"{path}: no run (manifest.json) and no evaluation (summary.json) in it")
    _unique_labels(found.evals)
    return found


def _unique_labels(evals: list[dict[str, Any]]) -> None:
    """Two folders may hold the same label (e.g. two eval runs of 'base'): tell them apart by folder."""
    counts: dict[str, int] = {}
    for summary in evals:
        counts[summary["model"]] = counts.get(summary["model"], 0) + 1
    for summary in evals:
        if counts[summary["model"]] > 1:
            summary["model"] = f"{summary['model']} ({Path(summary['_dir']).parent.name})"


# --------------------------------------------------------------------------------------------------------
# Tables


def score_frame(evals: list[dict[str, Any]], baseline: str | None = None):
    """Wide table: one row per benchmark (its headline metric), one column per model, then one
    ``Δ <model>`` column per other model (its score minus the baseline's)."""
    import pandas as pd

    models = [s["model"] for s in evals]
    base = baseline or (models[0] if models else None)
    if base is not None and base not in models:
        raise UserError(f"--baseline {baseline}: no such model; models: {', '.join(models)}")
    rows: dict[str, dict[str, Any]] = {}
    for summary in evals:
        for name, bench in summary["benchmarks"].items():
            row = rows.setdefault(name, {"benchmark": name, "metric": bench["primary"]})
            row[summary["model"]] = bench["score"]
    frame = pd.DataFrame(list(rows.values()), columns=["benchmark", "metric", *models])
    for model in models:
        if model != base:
            frame[f"Δ {model}"] = frame[model] - frame[base]
    return frame.set_index("benchmark")


def metric_frame(evals: list[dict[str, Any]]):
    """Long table: model, benchmark, metric, value, samples, throughput, backend."""
    import pandas as pd

    rows = []
    for summary in evals:
        for name, bench in summary["benchmarks"].items():
            for metric, value in bench["metrics"].items():
                rows.append(
                    {
                        "model": summary["model"],
                        "benchmark": name,
                        "metric": metric,
                        "value": value,
                        "primary": metric == bench["primary"],
                        "samples": bench["samples"],
                        "samples_per_s": bench.get("samples_per_s"),
                        "tokens_per_s": bench.get("tokens_per_s"),
                        "backend": summary.get("backend"),
                        "dtype": summary.get("dtype"),
                    }
                )
    return pd.DataFrame(
        rows,
        columns=[
            "model",
            "benchmark",
            "metric",
            "value",
            "primary",
            "samples",
            "samples_per_s",
            "tokens_per_s",
            "backend",
            "dtype",
        ],
    )


def throughput_frame(evals: list[dict[str, Any]]):
    import pandas as pd

    rows = [
        {
            "model": s["model"],
            "backend": s.get("backend"),
            "dtype": s.get("dtype"),
            "seed": s.get("seed"),
            "samples": sum(b["samples"] for b in s["benchmarks"].values()),
            "samples/s": s.get("samples_per_s"),
            "tokens/s": s.get("tokens_per_s"),
            "load s": s.get("load_seconds"),
        }
        for s in evals
    ]
    return pd.DataFrame(rows)


def run_frame(runs: list[RunInfo]):
    """One row per stage: steps, first and last training loss, best eval loss, time."""
    import pandas as pd

    rows = []
    for run in runs:
        for stage in run.stages:
            losses = [r["loss"] for r in stage["records"] if isinstance(r.get("loss"), int | float)]
            evals = [r["eval_loss"] for r in stage["records"] if isinstance(r.get("eval_loss"), int | float)]
            steps = max((r.get("current_steps", 0) for r in stage["records"]), default=0)
            rows.append(
                {
                    "run": run.name,
                    "stage": stage["name"],
                    "status": stage["status"],
                    "steps": steps,
                    "first loss": losses[0] if losses else None,
                    "final loss": losses[-1] if losses else None,
                    "best eval loss": min(evals) if evals else None,
                    "seconds": stage["seconds"],
                }
            )
    return pd.DataFrame(
        rows, columns=["run", "stage", "status", "steps", "first loss", "final loss", "best eval loss", "seconds"]
    )


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame, index: bool = True) -> str:
    """A GitHub-flavoured Markdown table (no dependency on tabulate)."""
    frame = frame.reset_index() if index and frame.index.name else frame
    header = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in frame.itertuples(index=False):
        cells = []
        for column, value in zip(header, row, strict=True):
            text = _fmt(value)
            if column.startswith("Δ ") and text != "–":
                text = f"{value:+.4f}"
            cells.append(text.replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------
# Plots


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: works without a display, in CI and over ssh
    import matplotlib.pyplot as plt

    return plt


def plot_losses(run: RunInfo, path: Path) -> bool:
    """One panel per stage: training loss (and eval loss) against the step; False when nothing was logged."""
    stages = [s for s in run.stages if any("loss" in r or "eval_loss" in r for r in s["records"])]
    if not stages:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        train = [(r["current_steps"], r["loss"]) for r in stage["records"] if "loss" in r and "current_steps" in r]
        evals = [
            (r["current_steps"], r["eval_loss"]) for r in stage["records"] if "eval_loss" in r and "current_steps" in r
        ]
        if train:
            ax.plot(*zip(*train, strict=True), marker=".", label="train loss")
        if evals:
            ax.plot(*zip(*evals, strict=True), marker="o", linestyle="--", label="eval loss")
        ax.set_title(f"{run.name} · {stage['name']}", fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scores(frame, models: list[str], path: Path) -> None:
    """Grouped bars: benchmarks along x (headline metric in the label), one bar per model."""
    plt = _pyplot()
    benchmarks = list(frame.index)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 + 1.1 * len(benchmarks) * max(1, len(models)) * 0.6), 3.8))
    for i, model in enumerate(models):
        values = [0.0 if v != v else float(v) for v in frame[model].tolist()]  # NaN (not evaluated) -> 0
        positions = [b + (i - (len(models) - 1) / 2) * width for b in range(len(benchmarks))]
        bars = ax.bar(positions, values, width, label=model)
        ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    ax.set_xticks(range(len(benchmarks)))
    ax.set_xticklabels([f"{b}\n({m})" for b, m in zip(benchmarks, frame["metric"], strict=True)], fontsize=8)
    ax.set_ylabel("score")
    top = max([1.0] + [float(v) for m in models for v in frame[m].tolist() if v == v])
    ax.set_ylim(0, top * 1.12)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------


def print_scores(frame, models: list[str], console: Console) -> None:
    table = Table(title="lfw report: scores (headline metric per benchmark)")
    table.add_column("benchmark")
    table.add_column("metric")
    for column in frame.columns[1:]:
        table.add_column(str(column), justify="right")
    for name, row in frame.iterrows():
        cells = [str(name), str(row["metric"])]
        for column in frame.columns[1:]:
            value = row[column]
            if value != value:  # NaN: not evaluated on this benchmark
                cells.append("–")
            elif str(column).startswith("Δ "):
                color = "green" if value > 0 else "red" if value < 0 else "white"
                cells.append(f"[{color}]{value:+.4f}[/]")
            else:
                cells.append(f"{value:.4f}")
        table.add_row(*cells)
    console.print(table)


def print_runs(frame, console: Console) -> None:
    table = Table(title="lfw report: training")
    for column in frame.columns:
        table.add_column(str(column), justify="right" if column not in ("run", "stage", "status") else "left")
    for row in frame.itertuples(index=False):
        table.add_row(*(_fmt(v) for v in row))
    console.print(table)


def build_report(
    dirs: list[str | Path], out: Path, baseline: str | None = None, console: Console | None = None
) -> Path:
    """Collect, tabulate, plot and write ``out/report.md``; returns its path."""
    console = console or Console()
    final = out.expanduser().resolve()
    check_replaceable(final)
    inputs = collect(dirs)
    staging = new_dir_beside(final, "partial")
    try:
        _write_report(inputs, dirs, staging, baseline, console)
        written = {name: sha256_file(staging / name) for name in files_in(staging)}
        record = json.dumps({"lfw_report": 1, "files": written}, indent=1) + "\n"
        (staging / MARKER).write_text(record, encoding="utf-8")
        swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the fresh folder made above, nothing else
        raise
    report = final / "report.md"
    console.print(f"report: {report}")
    return report


def check_replaceable(out: Path) -> None:
    """The report folder may be new, empty, or an earlier lfw report whose files are all as lfw wrote them."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UserError([Problem(f"-o {out}", "is a file, not a folder", "choose a folder with -o")])
    if not any(out.iterdir()):
        return
    try:
        written = json.loads((out / MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        written = None
    if not isinstance(written, dict):
        raise UserError(
            [
                Problem(
                    f"-o {out}",
                    "already holds files lfw report did not write; a report never replaces them",
                    "choose a new folder with -o (it is created), or empty this one",
                )
            ]
        )
    foreign = [name for name in files_in(out) if name != MARKER and written.get(name) != sha256_file(out / name)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise UserError(
            [
                Problem(
                    f"-o {out}",
                    f"holds files lfw report did not write, or changed since it did ({shown})",
                    "move them out of the folder, or choose a new folder with -o",
                )
            ]
        )


def _write_report(inputs: Inputs, dirs: list[str | Path], out: Path, baseline: str | None, console: Console) -> None:
    """report.md, the CSVs and the PNGs into `out`; the tables also to the terminal."""
    lines = ["# lfw report", "", "Inputs: " + ", ".join(f"`{d}`" for d in dirs), ""]
    models = [s["model"] for s in inputs.evals]

    if inputs.evals:
        scores = score_frame(inputs.evals, baseline)
        scores.to_csv(out / "scores.csv")
        metric_frame(inputs.evals).to_csv(out / "metrics.csv", index=False)
        plot_scores(scores, models, out / "scores.png")
        base = baseline or models[0]
        lines += [
            "## Scores",
            "",
            f"Headline metric per benchmark; Δ columns are differences against `{base}`.",
            "",
            markdown_table(scores),
            "",
            "![scores](scores.png)",
            "",
        ]
        lines += ["## All metrics", "", markdown_table(_pivot_metrics(inputs.evals)), ""]
        lines += ["## Throughput", "", markdown_table(throughput_frame(inputs.evals), index=False), ""]
        print_scores(scores, models, console)

    if inputs.runs:
        runs = run_frame(inputs.runs)
        lines += ["## Training", "", markdown_table(runs, index=False), ""]
        for run in inputs.runs:
            image = f"loss_{_slug(run.name)}.png"
            if plot_losses(run, out / image):
                lines += [f"![loss curves of {run.name}]({image})", ""]
        print_runs(runs, console)

    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")


def _pivot_metrics(evals: list[dict[str, Any]]):
    """Every metric: rows (benchmark, metric), one column per model."""
    frame = metric_frame(evals)
    models = list(dict.fromkeys(frame["model"]))
    wide = frame.pivot_table(index=["benchmark", "metric"], columns="model", values="value", sort=False)
    return wide.reindex(columns=models).reset_index()
