"""`lfw render`: print or write every file a run needs, without running anything."""

from __future__ import annotations

from pathlib import Path

import click

from lfw.cli.options import gpus_option, recipe_argument, set_option


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
    from lfw import api

    loaded = api.load_recipe(recipe, overrides)
    rendering = api.render(loaded, output, gpus=gpus)
    if output is None:
        click.echo(rendering.listing(), nl=False)
        return
    for item in rendering.files:
        click.echo(str(output / item.name))
