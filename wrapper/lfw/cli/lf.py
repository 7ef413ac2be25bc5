"""`lfw lf`: llamafactory-cli with every argument untouched, plus lfw's environment."""

from __future__ import annotations

import os
import subprocess

import click


@click.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lf(args: tuple[str, ...]) -> None:
    """Pass ARGS to llamafactory-cli as they are (--help included), with lfw's launch environment.

    Example: lfw lf train my.yaml
    """
    from lfw.launch.runner import llamafactory_cli
    from lfw.launch.target import launch_env, resolve_target
    from lfw.recipe.schema import HardwareSpec

    target = resolve_target(HardwareSpec())
    env = {**os.environ, **launch_env(target, deepspeed=False)}
    raise SystemExit(subprocess.call([llamafactory_cli(), *args], env=env))
