"""`lfw run`: check, render into a new run directory and launch each stage."""

from __future__ import annotations

from pathlib import Path

import click

from lfw.commands.options import gpus_option, recipe_argument, set_option


@click.command()
@recipe_argument
@click.option("--dry-run", is_flag=True, help="Check and show what would run; create and launch nothing.")
@click.option("--stream", is_flag=True, help="Echo LLaMA-Factory's output live (it is always in logs/).")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where run directories go (default: the recipe's output_dir).")
@gpus_option
@set_option
def run(recipe: str, dry_run: bool, stream: bool, output_dir: Path | None, gpus: int | None,
        overrides: tuple[str, ...]) -> None:
    """Check the recipe and data, render into a new run directory, launch every stage.

    Example: lfw run recipes/tiny_cpu_demo.yml
    """
    from lfw.launch import resolve_target
    from lfw.recipe_loader import load_recipe
    from lfw.runner import execute

    loaded = load_recipe(recipe, overrides)
    target = resolve_target(loaded.recipe.hardware, gpus)
    code = execute(loaded, target, dry_run=dry_run, stream=stream, output_root=output_dir)
    if code:
        raise SystemExit(code)
