"""The `lfw` command line: a lazy click group, so `lfw --help` never imports the heavy parts.

Each command lives in `lfw.cli.<module>` and is imported only when it is invoked (click's LazyGroup
pattern). User errors become one message and a non-zero exit; see `lfw.infra.errors`.
"""

from __future__ import annotations

import importlib

import click

from lfw import __version__
from lfw.infra.errors import UserError

# name -> (module under lfw.cli, attribute, one-line help shown by `lfw --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "render": ("render", "render", "Render every file a run needs (train YAML, DeepSpeed JSON, dataset_info)."),
    "run": ("run", "run", "Check, render into a new run directory and launch each stage."),
    "lf": ("lf", "lf", "llamafactory-cli with every argument untouched, plus lfw's environment."),
    "data": ("data", "data", "Check and convert training data (JSON, JSONL, Parquet, CSV, save_to_disk)."),
    "plan": ("plan", "plan", "Estimate per-GPU memory and pick the largest micro batch that fits."),
    "doctor": ("doctor", "doctor", "Check the environment and the recipe for known bad combinations."),
    "import": ("import_", "lf_import", "Turn an existing LLaMA-Factory train YAML into an lfw recipe."),
    "recipes": ("recipes", "recipes", "List the bundled recipes (or, with --fields, every recipe field)."),
    "export": ("export", "export", "Merge LoRA adapter(s) into the base model, verify it loads, record lineage."),
    "serve": ("serve", "serve", "Serve a model with vLLM's OpenAI-compatible server (127.0.0.1 by default)."),
    "slurm": ("slurm", "slurm", "Write (and optionally submit) an sbatch script that runs the recipe on N nodes."),
    "launch": ("launch", "launch", "Write a SkyPilot task or a Kubernetes PyTorchJob that runs the recipe on N nodes."),
    "eval": ("eval", "eval", "Score models on local benchmarks through vLLM (or transformers)."),
    "report": ("report", "report", "Compare runs and evaluations: tables, loss curves and score charts."),
    "status": ("status", "status", "Where a run stands: per stage step/total, loss, lr, ETA, tokens/s, eval loss."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"lfw.cli.{module_name}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help comes from the table above, so listing commands imports none of them.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> object:
        # User errors: one clear message, exit 2, no traceback (copier's _handle_exceptions pattern).
        try:
            return super().invoke(ctx)
        except UserError as err:
            click.secho(f"error: {err.render()}", fg="red", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lfw")
def cli() -> None:
    """lfw: short recipes in, complete LLaMA-Factory runs out (render, check, launch, merge, serve, score)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point (also for tests): returns the exit code instead of exiting."""
    try:
        cli.main(args=argv, prog_name="lfw", standalone_mode=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return 0
