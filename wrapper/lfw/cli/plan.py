"""`lfw plan`: per-GPU memory of each stage, broken down, the micro batch and gradient checkpointing that fit, the
ZeRO stage that would fit when nothing does, or the OOM ladder.

Only click at import time; the planner is pure arithmetic (no torch), so the answer comes in milliseconds.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import click

from lfw.cli.options import gpus_option, recipe_argument, set_option

if TYPE_CHECKING:
    from rich.console import Console

    from lfw.preflight.memory.choice import Choice
    from lfw.preflight.memory.planner import Estimate, PlanInput


@click.command()
@recipe_argument
@gpus_option
@click.option(
    "--gpu-mem",
    type=click.FloatRange(min=1),
    default=None,
    metavar="GiB",
    help="Memory per GPU in GiB (default: the smallest detected GPU).",
)
@click.option(
    "--arch",
    default=None,
    metavar="PRESET",
    help="Architecture preset when the model is not on disk (qwen3-0.6b ... qwen3-32b).",
)
@click.option(
    "--margin",
    type=click.FloatRange(0, 0.9),
    default=0.10,
    show_default=True,
    help="Fraction of GPU memory kept free.",
)
@set_option
def plan(
    recipe: str,
    gpus: int | None,
    gpu_mem: float | None,
    arch: str | None,
    margin: float,
    overrides: tuple[str, ...],
) -> None:
    """Estimate per-GPU memory of each stage; pick the largest micro batch that fits and whether gradient
    checkpointing is needed (what `auto` renders).

    Example: lfw plan recipes/qwen3_14b_qlora_4gpu.yml --gpus 4 --gpu-mem 80
    """
    from rich.console import Console

    from lfw import api
    from lfw.preflight.memory.planner import GIB

    console = Console()
    loaded = api.load_recipe(recipe, overrides)
    memory = api.plan(loaded, gpus=gpus, gpu_mem_gib=gpu_mem, arch=arch, margin=margin)
    r, gpu_bytes = loaded.recipe, memory.gpu_bytes
    where = f"{memory.world} GPU(s)" + (f" x {gpu_bytes / GIB:.0f} GiB" if gpu_bytes else ", memory unknown")
    console.print(f"[bold]{memory.arch.describe()}[/bold]")
    console.print(f"method {r.method.type}, deepspeed {r.hardware.deepspeed}, {where}")
    for stage in memory.stages:
        _print_table(console, f"stage {stage.index + 1}: {stage.stage}", stage.estimate)
        if stage.choice is None or not gpu_bytes:
            _print_unknown_memory(console, stage.inp)
            continue
        _print_choice(console, stage.choice, stage.global_batch, memory.world, gpu_bytes, margin)


def _print_table(console: Console, title: str, est: Estimate) -> None:
    from rich.table import Table

    from lfw.preflight.memory.planner import gib

    inp = est.inp
    gc = "checkpointing on" if inp.gradient_checkpointing else "checkpointing off"
    table = Table(title=f"{title}, micro batch {inp.micro_batch} x cutoff {inp.cutoff_len}, {gc}", title_justify="left")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    table.add_column("note")
    for part in est.components:
        table.add_row(part.name, gib(part.bytes), part.note)
    table.add_row("allocator slack", gib(est.reserved - est.allocated), "caching allocator (reserved - allocated)")
    table.add_row("[bold]peak per GPU[/bold]", f"[bold]{gib(est.total)}[/bold]", f"+ CUDA context; {est.peak_phase}")
    console.print(table)
    if est.cpu_bytes:
        console.print(f"CPU memory for offloaded state: {gib(est.cpu_bytes)} GiB (all GPUs of a node together)")


def _print_unknown_memory(console: Console, inp: PlanInput) -> None:
    from lfw.preflight.memory.planner import estimate, gib

    rows = ", ".join(f"{m}: {gib(estimate(replace(inp, micro_batch=m)).total)}" for m in (1, 2, 4, 8, 16))
    console.print(f"peak GiB by micro batch: {rows}")
    console.print("no GPU detected: pass --gpu-mem GiB to pick a micro batch")


def _print_choice(
    console: Console, choice: Choice, global_batch: int, world: int, gpu_bytes: float, margin: float
) -> None:
    """The pick (micro batch, accumulation, checkpointing), the planner's notes, and the ladder when nothing fits."""
    from rich.table import Table

    from lfw.preflight.memory.choice import oom_ladder
    from lfw.preflight.memory.planner import GIB, gib

    est = choice.estimate
    if choice.micro_batch is not None:
        accum = f"gradient accumulation {choice.grad_accum}" if choice.grad_accum else "no whole accumulation"
        gc = "on" if est.inp.gradient_checkpointing else "off"
        console.print(
            f"[green]micro batch {choice.micro_batch}[/green], {accum} (global {global_batch} = "
            f"{choice.micro_batch} x {choice.grad_accum} x {world} GPUs), gradient checkpointing {gc}, "
            f"peak {gib(est.total)} of {gpu_bytes / GIB:.0f} GiB"
        )
    for note in choice.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if choice.micro_batch is not None:
        return
    console.print(
        f"[red]does not fit[/red]: {gib(est.total)} GiB needed, "
        f"{gpu_bytes * (1 - margin) / GIB:.1f} GiB usable. The OOM ladder (cumulative):"
    )
    ladder = Table()
    for column in ("step", "peak GiB", "fits"):
        ladder.add_column(column)
    for step in oom_ladder(est.inp, gpu_bytes, margin):
        ladder.add_row(step.action, gib(step.estimate.total), "yes" if step.fits else "no")
    console.print(ladder)
