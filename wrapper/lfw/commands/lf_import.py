"""`lfw import`: turn an existing LLaMA-Factory train YAML into a recipe."""

from __future__ import annotations

from pathlib import Path

import click

from lfw.errors import UserError


@click.command("import")
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the recipe here (a new file) instead of printing it.",
)
@click.option(
    "--gpus",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="GPUs the YAML was run on (sets global_batch_size = micro x accumulation x GPUs).",
)
@click.option(
    "--dataset-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder with dataset_info.json (default: the YAML's dataset_dir, else data/ beside it).",
)
def lf_import(config: Path, output: Path | None, gpus: int, dataset_dir: Path | None) -> None:
    """Translate a LLaMA-Factory train YAML into an lfw recipe, then check it like any recipe.

    Example: lfw import examples/train_lora/qwen3_lora_sft.yaml --gpus 4 -o my_recipe.yml
    """
    import tempfile

    from lfw.lf_import import import_config
    from lfw.recipe_loader import load_recipe

    imported = import_config(config.resolve(), gpus=gpus, dataset_dir=dataset_dir)
    text = imported.to_yaml(config)
    with tempfile.TemporaryDirectory() as tmp:  # the same checks as any recipe, before anything is written
        check = Path(tmp) / "recipe.yml"
        check.write_text(text, encoding="utf-8")
        load_recipe(str(check))
    if output is None:
        click.echo(text, nl=False)
        return
    if output.exists():
        raise UserError(f"{output} exists: choose a new file name (lfw never overwrites files)")
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}; check it with: lfw render {output}")
