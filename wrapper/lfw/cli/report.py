"""`lfw report`: compare runs and evaluations (tables, loss curves, score charts)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("dirs", nargs=-1, required=True, metavar="DIR...")
@click.option(
    "-o",
    "--output-dir",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("report"),
    show_default=True,
    help="Where report.md, the PNGs and the CSVs go: a new or empty folder, or an earlier report (replaced whole).",
)
@click.option(
    "--baseline",
    default=None,
    metavar="MODEL",
    help="Model label the differences are taken against (default: the first model).",
)
def report(dirs: tuple[str, ...], out: Path, baseline: str | None) -> None:
    """Compare run directories (lfw run) and evaluation folders (lfw eval).

    Writes OUT/report.md with a benchmark x model table and differences against the first model, every
    metric, throughput, training losses, and next to it scores.png and one loss_<run>.png per run; prints
    the tables. Models appear in the order of the DIRs. OUT is written whole: an earlier lfw report there is
    replaced (its old images too); a folder holding other files, or report files edited since, is refused.

    \b
    Example:
      lfw report runs/tiny-cpu-demo/20250101-120000 evals/base evals/sft -o report
    """
    from lfw.post.report import build_report

    build_report(list(dirs), out, baseline)
