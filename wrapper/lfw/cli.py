"""The `lfw` command line: a lazy click group, so `lfw --help` never imports the heavy parts.

Each command lives in `lfw.commands.<module>` and is imported only when it is invoked (click's LazyGroup
pattern). User errors become one message and a non-zero exit; see `lfw.errors`.
"""

from __future__ import annotations

import importlib
import sys

import click

from lfw import __version__
from lfw.errors import UserError

# name -> (module under lfw.commands, attribute, one-line help shown by `lfw --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "render": ("render", "render", "Render every file a run needs (train YAML, DeepSpeed JSON, dataset_info)."),
    "run": ("run", "run", "Check, render into a new run directory and launch each stage."),
    "lf": ("lf", "lf", "llamafactory-cli with every argument untouched, plus lfw's environment."),
    "recipes": ("recipes", "recipes", "List the bundled recipes (or, with --fields, every recipe field)."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"lfw.commands.{module_name}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Short help comes from the table above, so listing commands imports none of them.
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lfw")
def cli() -> None:
    """lfw: short recipes in, complete LLaMA-Factory runs out (render, check, launch, merge, serve, score)."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and turn user errors into a clean message and exit code."""
    try:
        result = cli.main(args=argv, prog_name="lfw", standalone_mode=False)
    except UserError as err:
        click.secho(f"error: {err.render()}", fg="red", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
