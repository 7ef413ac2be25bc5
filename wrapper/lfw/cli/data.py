"""`lfw data check` / `convert` / `prepare`: validate a dataset before any GPU time, fix the container, tokenize
ahead of a GPU job.

Only click and the vocabulary (`lfw.recipe.vocabulary`: the formats, stages and tag styles a recipe accepts) are
imported at module level; the checker (`lfw.preflight.data`) and rich are imported when a command runs, so listing
commands stays instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from lfw.cli.options import gpus_option, recipe_argument, set_option
from lfw.recipe.vocabulary import FORMATS, STAGES, TAG_STYLES

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from lfw.preflight.data.report import DataProblem, DataReport


@click.group()
def data() -> None:
    """Check and convert training data (JSON, JSONL, Parquet, CSV, save_to_disk folders)."""


@data.command()
@click.argument("path", metavar="FILE|DIR", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    metavar="FORMAT",
    help=f"Expected format ({', '.join(FORMATS)}); default: detected from the rows.",
)
@click.option("--model", metavar="DIR", help="Local model folder with tokenizer.json: report token lengths.")
@click.option("--cutoff-len", type=click.IntRange(min=1), help="List the rows this cutoff_len would truncate.")
@click.option("--media-dir", type=click.Path(path_type=Path), help="Folder media paths are relative to.")
@click.option("--tags", type=click.Choice(TAG_STYLES), help="Enforce one message tag style.")
@click.option("--stage", type=click.Choice(STAGES), help="Check fit for a stage.")
@click.option("-n", "--max-problems", default=20, show_default=True, help="Errors and warnings listed (each).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@click.pass_context
def check(
    ctx: click.Context,
    path: Path,
    fmt: str | None,
    model: str | None,
    cutoff_len: int | None,
    media_dir: Path | None,
    tags: str | None,
    stage: str | None,
    max_problems: int,
    as_json: bool,
) -> None:
    """Validate every row of FILE|DIR the way LLaMA-Factory will read it; exit 1 if there are errors.

    \b
    Examples:
      lfw data check data/train.jsonl
      lfw data check data/dpo.json --format preference_sharegpt --stage dpo
      lfw data check data/train.jsonl --model ./Qwen3-0.6B --cutoff-len 2048
    """
    from lfw.api import check_data

    # UserError (bad arguments) propagates to lfw.cli.main: one message, no traceback
    report = check_data(
        path, fmt, tokenizer_dir=model, cutoff_len=cutoff_len, media_dir=media_dir, tags=tags, stage=stage
    )
    if as_json:
        click.echo(_to_json(report))
    else:
        from rich.console import Console

        print_report(report, Console(highlight=False, soft_wrap=True), max_problems)
    if not report.ok:
        ctx.exit(1)


@data.command()
@click.argument("src", metavar="SRC", type=click.Path(exists=True, path_type=Path))
@click.argument("out", metavar="OUT.jsonl", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--split", help="Split of a DatasetDict folder (default: train, or the only split).")
def convert(src: Path, out: Path, split: str | None) -> None:
    """Write SRC (a save_to_disk folder, Parquet, Arrow, CSV or JSON) as JSONL that LLaMA-Factory loads.

    Embedded images are written to OUT_media/ and referenced by relative path.
    """
    from lfw.preflight.data.convert import convert_to_jsonl

    written = convert_to_jsonl(src, out, split)
    with written.open("rb") as fh:
        rows = sum(1 for _ in fh)
    click.echo(f"wrote {rows} rows to {written}")


@data.command()
@recipe_argument
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the runs will go (default: the recipe's output_dir); the cache is its .tokenized folder.",
)
@gpus_option
@set_option
def prepare(recipe: str, output_dir: Path | None, gpus: int | None, overrides: tuple[str, ...]) -> None:
    """Tokenize every stage's data with LLaMA-Factory now, so the GPU job starts training at once.

    The tokenized sets go to <output_dir>/.tokenized/<hash> (or $LFW_CACHE_DIR/tokenized), named by a hash of
    what changes the tokens; `lfw run` of the same recipe on any node that sees the folder loads them.

    Example: lfw data prepare recipes/qwen3_4b_qlora_sft_dpo_4gpu.yml
    """
    from rich.console import Console

    from lfw.launch.target import resolve_target
    from lfw.recipe.loader import load_recipe
    from lfw.rendering.tokenized import prepare_recipe

    loaded = load_recipe(recipe, overrides)
    target = resolve_target(loaded.recipe.hardware, gpus)
    root = (output_dir or Path(loaded.recipe.output_dir)).expanduser().resolve()
    prepare_recipe(loaded, target, root, Console(highlight=False, soft_wrap=True))


def print_report(report: DataReport, console: Console, max_problems: int = 20) -> None:
    """Summary table, length statistics, then the first problems with their fixes and the verdict."""
    parts = report.parts or [report]
    console.print(_summary_table(report, parts))
    if not report.parts and report.data_format is not None:
        _print_layout(report, console)
    measured = [p for p in parts if p.lengths is not None] or ([report] if report.lengths else [])
    if measured:
        console.print(_lengths_table(report, measured))
    _print_problems(console, "Errors", report.errors, report.error_count, max_problems, "red")
    _print_problems(console, "Warnings", report.warnings, report.warning_count, max_problems, "yellow")
    _print_verdict(report, console, max_problems)


def _summary_table(report: DataReport, parts: list[DataReport]) -> Table:
    """One line per file or split (and a total for a folder): container, format, rows, errors, warnings."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"Data check: {report.path}", title_justify="left")
    table.add_column("File", overflow="fold")
    for col in ("Container", "Format", "Rows", "Errors", "Warnings"):
        table.add_column(col, justify="right" if col in ("Rows", "Errors", "Warnings") else "left")
    for part in parts:
        errs = Text(str(part.error_count), style="red" if part.error_count else "green")
        name = Text(_short(part.path, report.path))
        table.add_row(name, part.container, Text(part.format or "?"), str(part.rows), errs, str(part.warning_count))
    if report.parts:
        own_err = report.error_count - sum(p.error_count for p in parts)
        own_warn = report.warning_count - sum(p.warning_count for p in parts)
        table.add_section()
        totals = (str(report.rows), str(report.error_count), str(report.warning_count))
        table.add_row("total", report.container, Text(report.format or "?"), *totals)
        if own_err or own_warn:
            table.caption = f"{own_err} error(s), {own_warn} warning(s) about the folder itself"
    return table


def _print_layout(report: DataReport, console: Console) -> None:
    """The detected layout and the dataset_info.json entry `lfw render` would register for it."""
    from rich.text import Text

    assert report.data_format is not None
    entry = report.data_format.dataset_info_entry(report.path.name)
    text = f"layout: {report.data_format.describe()}; dataset_info.json entry: {json.dumps(entry, ensure_ascii=False)}"
    console.print(Text(text, style="dim"))


def _lengths_table(report: DataReport, measured: list[DataReport]) -> Table:
    """Token-length percentiles per part, the cutoff_len that covers 95%, and how many rows a cutoff cuts."""
    from rich.table import Table
    from rich.text import Text

    first = measured[0].lengths
    assert first is not None
    table = Table(title=f"Token lengths ({first.note})", title_justify="left")
    cols = ["File", "p50", "p90", "p95", "p99", "max", "cutoff_len for 95%"]
    if first.cutoff_len is not None:
        cols.append(f"> {first.cutoff_len}")
    for col in cols:
        table.add_column(col, justify="left" if col == "File" else "right", overflow="fold")
    for part in measured:
        s = part.lengths
        assert s is not None
        cells = [str(v) for v in (s.p50, s.p90, s.p95, s.p99, s.max, s.suggested_cutoff_len)]
        if s.cutoff_len is not None:
            cells.append(f"{s.over_cutoff} ({100 * s.over_cutoff / max(s.count, 1):.1f}%)")
        table.add_row(Text(_short(part.path, report.path)), *cells)
    return table


def _print_verdict(report: DataReport, console: Console, max_problems: int) -> None:
    """Counts by kind when not every problem was listed, what was skipped, then OK or FAILED."""
    from rich.text import Text

    shown = len(report.errors[:max_problems]) + len(report.warnings[:max_problems])
    if report.error_count + report.warning_count > shown:
        counts = ", ".join(f"{code}: {n}" for code, n in sorted(report.code_counts.items(), key=lambda x: -x[1]))
        console.print(Text(f"by kind: {counts}"))
    for line in report.skipped:
        console.print(Text(f"skipped: {line}", style="dim"))
    if report.ok:
        console.print(Text(f"OK: {report.rows} rows, no errors", style="bold green"))
    else:
        console.print(
            Text(
                f"FAILED: {report.error_count} error(s) in {report.rows} rows; LLaMA-Factory would drop, "
                "crash on or train on garbage from these rows",
                style="bold red",
            )
        )


def _print_problems(
    console: Console, title: str, problems: list[DataProblem], total: int, limit: int, style: str
) -> None:
    from rich.text import Text

    if not total:
        return
    more = f" (first {min(limit, len(problems))} of {total})" if total > min(limit, len(problems)) else ""
    console.print(Text(f"{title}{more}:", style=f"bold {style}"))
    for p in problems[:limit]:
        console.print(Text(f"  {p.where}: ") + Text(p.message, style=style))
        if p.fix:
            console.print(Text(f"      fix: {p.fix}", style="dim"))


def _short(path: Path, root: Path) -> str:
    """Paths of folder parts relative to the folder, so the table stays narrow."""
    try:
        rel = path.relative_to(root)
    except ValueError:
        return str(path)
    return str(rel) if str(rel) != "." else str(path)


def _to_json(report: DataReport) -> str:
    import dataclasses

    def strip(obj: dict) -> dict:
        obj.pop("raw_lengths", None)
        obj["parts"] = [strip(p) for p in obj.get("parts", [])]
        return obj

    return json.dumps(strip(dataclasses.asdict(report)), indent=2, ensure_ascii=False, default=str)
