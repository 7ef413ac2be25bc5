"""`lfw render`: print or write every file a run needs, without running anything."""

from __future__ import annotations

from pathlib import Path

import click

from lfw.cli.options import gpus_option, recipe_argument, set_option
from lfw.infra.errors import UserError


@click.command()
@recipe_argument
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write the files into this (new or empty) folder instead of printing them.",
)
@gpus_option
@set_option
def render(recipe: str, output: Path | None, gpus: int | None, overrides: tuple[str, ...]) -> None:
    """Render the LLaMA-Factory train YAML of each stage, the DeepSpeed JSON and dataset_info.json.

    Example: lfw render recipes/qwen3_14b_qlora_4gpu.yml --gpus 4
    """
    from lfw.launch.target import resolve_target
    from lfw.recipe.loader import load_recipe
    from lfw.rendering.render import render as render_files

    loaded = load_recipe(recipe, overrides)
    target = resolve_target(loaded.recipe.hardware, gpus)
    if output is not None:
        if output.exists() and any(output.iterdir()):
            raise UserError(f"{output} is not empty: choose a new folder (lfw never overwrites files)")
        rendering = render_files(loaded, target, output)
        for path in rendering.write(output):
            click.echo(str(path))
        return
    run_dir = Path(loaded.recipe.output_dir) / loaded.recipe.name / "rendered"
    click.echo(render_files(loaded, target, run_dir).listing(), nl=False)
