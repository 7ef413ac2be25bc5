"""Options shared by the commands that read a recipe."""

from __future__ import annotations

import click

recipe_argument = click.argument("recipe", metavar="RECIPE")
set_option = click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe value, e.g. --set training.learning_rate=2e-5 (repeatable).",
)
gpus_option = click.option(
    "--gpus", type=click.IntRange(min=1), default=None, help="GPUs per node (overrides hardware.gpus)."
)
vllm_python_option = click.option(
    "--vllm-python",
    default=None,
    metavar="PATH",
    help="Interpreter of the vLLM environment (default: $LFW_VLLM_PYTHON, then .venv-vllm, then PATH).",
)
