"""`lfw recipes`: the bundled recipes, one line each, and the recipe fields."""

from __future__ import annotations

import click


@click.command()
@click.option("--fields", is_flag=True, help="List every recipe field with its description instead.")
def recipes(fields: bool) -> None:
    """List the bundled recipes (use one by name: lfw run recipes/NAME.yml).

    Example: lfw recipes --fields
    """
    from lfw.recipe.catalog import bundled_summaries, field_docs

    if fields:
        for path, description in field_docs():
            click.echo(f"{path:42} {description}")
        return
    for name, line in bundled_summaries():
        click.echo(f"recipes/{name:32} {line}")
