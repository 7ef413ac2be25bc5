"""`lfw status`: per-stage progress, loss, learning rate, ETA, tokens/s, eval loss and perplexity of a run."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dir", type=click.Path(path_type=Path), metavar="RUN_DIR")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(run_dir: Path, as_json: bool) -> None:
    """Show where a run stands: each stage's status, step/total, loss, learning rate, ETA, tokens/s, GPU memory
    (when LLaMA-Factory logs it), and eval loss with perplexity when the recipe holds out validation data.

    RUN_DIR is a run directory, or a recipe's run folder (the newest run in it is shown). Reads manifest.json and
    each stage's trainer_log.jsonl, so it works during the run, after it, and from another shell.

    Example: lfw status runs/tiny-cpu-demo
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from lfw.launch.status import describe_stage, run_status

    report = run_status(run_dir)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2, default=str))
        return
    console = Console()
    console.print(f"[bold]{escape(str(report.run_dir))}[/]: {report.status}", highlight=False)
    if report.recipe:
        console.print(
            f"recipe {report.recipe}, started {report.created or '?'}", markup=False, highlight=False, soft_wrap=True
        )
    for stage in report.stages:
        console.print(describe_stage(stage), markup=False, highlight=False, soft_wrap=True)
    for step in report.steps:
        seconds = f"  {step['seconds']:.0f} s" if step["seconds"] is not None else ""
        console.print(f"{step['name']}  {step['status']}{seconds}", markup=False, highlight=False, soft_wrap=True)
    for stage in report.stages:
        if len(stage.evaluations) > 1:
            evals = Table(title=f"{escape(stage.name)}: evaluations on the held-out data", title_justify="left")
            for column in ("step", "epoch", "eval loss", "perplexity"):
                evals.add_column(column, justify="right")
            for item in stage.evaluations:
                evals.add_row(
                    str(item.step),
                    "-" if item.epoch is None else f"{item.epoch:.2f}",
                    f"{item.eval_loss:.4f}",
                    f"{item.perplexity:.2f}",
                )
            console.print(evals)
