"""`lfw import`: turn an existing LLaMA-Factory train YAML into a recipe."""

from __future__ import annotations

from pathlib import Path

import click

from lfw.infra.errors import Problem
from lfw.infra.owned import write_new_file


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
    help="Folder with dataset_info.json (default: the YAML's dataset_dir, else data/, in the current folder).",
)
def lf_import(config: Path, output: Path | None, gpus: int, dataset_dir: Path | None) -> None:
    """Translate a LLaMA-Factory train YAML into an lfw recipe, then check it like any recipe.

    Run it where LLaMA-Factory ran (its checkout's root for its examples): like LLaMA-Factory, relative paths
    in the YAML (dataset_dir, deepspeed, a local model) are read against the current folder.

    Example: lfw import examples/train_lora/qwen3_lora_sft.yaml --gpus 4 -o my_recipe.yml
    """
    from lfw.recipe.lf_import import check_imported, import_config

    text = check_imported(import_config(config, gpus=gpus, dataset_dir=dataset_dir), config)
    if output is None:
        click.echo(text, nl=False)
        return
    exists = Problem("lfw", f"{output} exists: choose a new file name (lfw never overwrites files)")
    write_new_file(output, text, exists)
    click.echo(f"wrote {output}; check it with: lfw render {output}")
