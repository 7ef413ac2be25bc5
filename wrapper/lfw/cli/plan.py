"""`lfw plan`: per-GPU memory of each stage, broken down, the largest micro batch that fits, or the ladder.

Only click at import time; the planner is pure arithmetic (no torch), so the answer comes in milliseconds.
"""

from __future__ import annotations

import click

from lfw.cli.options import gpus_option, recipe_argument, set_option


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
    """Estimate per-GPU memory of each stage and pick the largest micro batch that fits.

    Example: lfw plan recipes/qwen3_14b_qlora_4gpu.yml --gpus 4 --gpu-mem 80
    """
    from rich.console import Console
    from rich.table import Table

    from lfw.infra.hardware import visible_gpus
    from lfw.preflight.memory.planner import GIB, choose_micro_batch, estimate, gib, oom_ladder, plan_input
    from lfw.preflight.memory.shapes import resolve_arch
    from lfw.recipe.loader import load_recipe

    console = Console()
    loaded = load_recipe(recipe, overrides)
    r = loaded.recipe
    model_arch = resolve_arch(r.model.path, loaded.base_dir, arch)
    detected = [] if r.hardware.device == "cpu" else visible_gpus()
    world = gpus or (r.hardware.gpus if r.hardware.gpus != "auto" else max(len(detected), 1))
    gpu_bytes = gpu_mem * GIB if gpu_mem else (min(g.memory_mib for g in detected) * 2**20 if detected else None)
    where = f"{world} GPU(s)" + (f" x {gpu_bytes / GIB:.0f} GiB" if gpu_bytes else ", memory unknown")
    console.print(f"[bold]{model_arch.describe()}[/bold]")
    console.print(f"method {r.method.type}, deepspeed {r.hardware.deepspeed}, {where}")

    for index, stage in enumerate(r.stages):
        training = r.stage_training(index)
        fixed = training.micro_batch_size if isinstance(training.micro_batch_size, int) else None
        inp = plan_input(r, index, model_arch, world, fixed or 1)
        choice = None
        if gpu_bytes and fixed is None:
            choice = choose_micro_batch(inp, training.global_batch_size, gpu_bytes, margin)
            est = choice.estimate
        else:
            est = estimate(inp)
        title = f"stage {index + 1}: {stage.stage}, micro batch {est.inp.micro_batch}"
        title += f" x cutoff {training.cutoff_len}"
        table = Table(title=title, title_justify="left")
        table.add_column("part")
        table.add_column("GiB", justify="right")
        table.add_column("note")
        for part in est.components:
            table.add_row(part.name, gib(part.bytes), part.note)
        table.add_row("allocator slack", gib(est.reserved - est.allocated), "caching allocator (reserved - allocated)")
        table.add_row(
            "[bold]peak per GPU[/bold]", f"[bold]{gib(est.total)}[/bold]", f"+ CUDA context; {est.peak_phase}"
        )
        console.print(table)
        if est.cpu_bytes:
            console.print(f"CPU memory for offloaded state: {gib(est.cpu_bytes)} GiB (all GPUs of a node together)")
        if not gpu_bytes:
            rows = ", ".join(
                f"{m}: {gib(estimate(inp.__class__(**{**inp.__dict__, 'micro_batch': m})).total)}"
                for m in (1, 2, 4, 8, 16)
            )
            console.print(f"peak GiB by micro batch: {rows}")
            console.print("no GPU detected: pass --gpu-mem GiB to pick a micro batch")
            continue
        fits = est.fits(gpu_bytes, margin)
        if choice is not None and choice.micro_batch is not None:
            console.print(
                f"[green]micro batch {choice.micro_batch}[/green], gradient accumulation "
                f"{choice.grad_accum} (global {training.global_batch_size} = {choice.micro_batch} x "
                f"{choice.grad_accum} x {world} GPUs), peak {gib(est.total)} of {gpu_bytes / GIB:.0f} GiB"
            )
        elif fits:
            console.print(
                f"[green]fits[/green]: {gib(est.total)} of {gpu_bytes / GIB:.0f} GiB with {margin:.0%} margin"
            )
        for note in choice.notes if choice else []:
            console.print(f"[yellow]note:[/yellow] {note}")
        if (choice is not None and choice.micro_batch is None) or (choice is None and not fits):
            console.print(
                f"[red]does not fit[/red]: {gib(est.total)} GiB needed, "
                f"{gpu_bytes * (1 - margin) / GIB:.1f} GiB usable. The OOM ladder (cumulative):"
            )
            ladder = Table()
            for column in ("step", "peak GiB", "fits"):
                ladder.add_column(column)
            for step in oom_ladder(inp, gpu_bytes, margin):
                ladder.add_row(step.action, gib(step.estimate.total), "yes" if step.fits else "no")
            console.print(ladder)
