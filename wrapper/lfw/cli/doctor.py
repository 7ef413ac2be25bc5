"""`lfw doctor [RECIPE]`: versions, driver, caches, disk, and the recipe's known bad combinations.

Only click at import; the checks read package metadata and run nvidia-smi, never importing torch.
"""

from __future__ import annotations

import click

from lfw.cli.options import gpus_option, set_option


@click.command()
@click.argument("recipe", metavar="[RECIPE]", required=False)
@gpus_option
@set_option
def doctor(recipe: str | None, gpus: int | None, overrides: tuple[str, ...]) -> None:
    """Check the environment and, given a recipe, its known bad combinations. Exit 1 on any failure.

    Example: lfw doctor recipes/qwen3_14b_qlora_4gpu.yml
    """
    from rich.console import Console
    from rich.table import Table

    from lfw.preflight.doctor import FAIL, OK, WARN, run_doctor

    loaded = None
    if recipe:
        from lfw.recipe.loader import load_recipe

        loaded = load_recipe(recipe, overrides)
    checks = run_doctor(loaded, gpu_count=gpus)
    table = Table(title="lfw doctor" + (f": {recipe}" if recipe else ""), title_justify="left")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    style = {OK: "green", WARN: "yellow", FAIL: "red"}
    for check in checks:
        table.add_row(check.name, f"[{style[check.status]}]{check.status}[/]", check.detail, check.fix)
    Console().print(table)
    fails = sum(check.status == FAIL for check in checks)
    if fails:
        click.secho(f"{fails} check(s) failed", fg="red", err=True)
        raise SystemExit(1)
