"""lfw's Python API: the functions the commands call, for notebooks, scripts and other tools.

    import lfw

    loaded = lfw.load_recipe("recipes/tiny_cpu_demo.yml", ["training.max_steps=5"])
    rendering = lfw.render(loaded, "rendered")          # writes every file a run needs, returns them
    memory = lfw.plan(loaded, gpus=4, gpu_mem_gib=80)   # per stage: peak per GPU and the micro batch that fits
    report = lfw.check_data("data/train.jsonl", fmt="sharegpt")   # every row, as `lfw data check` reads it
    code = lfw.run(loaded)                              # 0 when every stage finished

User mistakes raise `lfw.UserError` (its `problems` name the file, key or line and the fix), as the CLI
prints them. `import lfw` imports none of this: each name is loaded on first use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from lfw.infra.errors import UserError

if TYPE_CHECKING:
    from lfw.launch.target import Target
    from lfw.preflight.data.check import DataReport
    from lfw.preflight.memory.choice import Choice
    from lfw.preflight.memory.planner import Estimate, PlanInput
    from lfw.preflight.memory.shapes import ModelArch
    from lfw.recipe.loader import LoadedRecipe
    from lfw.rendering.render import Rendering


def load_recipe(path: str | os.PathLike[str], overrides: list[str] | tuple[str, ...] = ()) -> LoadedRecipe:
    """Read a recipe (or a bundled recipe's name), apply `--set`-style overrides, validate it."""
    from lfw.recipe.loader import load_recipe as load

    return load(os.fspath(path), overrides)


def _loaded(recipe: LoadedRecipe | str | os.PathLike[str]) -> LoadedRecipe:
    return recipe if not isinstance(recipe, (str, os.PathLike)) else load_recipe(recipe)


def target_for(
    recipe: LoadedRecipe | str | os.PathLike[str],
    gpus: int | None = None,
    *,
    nnodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> Target:
    """Where the recipe would run here: GPU count (argument, recipe, detected), nodes, precision."""
    from lfw.launch.target import resolve_target

    hardware = _loaded(recipe).recipe.hardware
    return resolve_target(
        hardware, gpus, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port
    )


def render(
    recipe: LoadedRecipe | str | os.PathLike[str],
    output: str | os.PathLike[str] | None = None,
    *,
    gpus: int | None = None,
) -> Rendering:
    """Render every stage's train YAML, the DeepSpeed JSON and dataset_info.json (`lfw render`).

    With `output` (a new or empty folder) the files are written there and point into it; without, they are
    rendered for `<output_dir>/<name>/rendered` and only returned.
    """
    from lfw.rendering.render import render as render_files

    loaded = _loaded(recipe)
    target = target_for(loaded, gpus)
    if output is None:
        return render_files(loaded, target, Path(loaded.recipe.output_dir) / loaded.recipe.name / "rendered")
    folder = Path(output)
    if folder.exists() and any(folder.iterdir()):
        raise UserError(f"{folder} is not empty: choose a new folder (lfw never overwrites files)")
    rendering = render_files(loaded, target, folder)
    rendering.write(folder)
    return rendering


@dataclass
class StagePlan:
    """One stage's memory: the estimate at the chosen (or fixed) micro batch and, with a GPU size, the choice."""

    index: int
    stage: str
    inp: PlanInput
    estimate: Estimate
    choice: Choice | None
    global_batch: int
    cutoff_len: int


@dataclass
class MemoryPlan:
    arch: ModelArch
    world: int
    gpu_bytes: float | None
    margin: float
    stages: list[StagePlan]


def plan(
    recipe: LoadedRecipe | str | os.PathLike[str],
    *,
    gpus: int | None = None,
    gpu_mem_gib: float | None = None,
    arch: str | None = None,
    margin: float = 0.10,
) -> MemoryPlan:
    """Per-GPU memory of each stage and the largest micro batch that fits (`lfw plan`); pure arithmetic.

    `gpu_mem_gib` defaults to the smallest visible GPU; without one, stages are estimated at micro batch 1
    (or the recipe's) and no choice is made.
    """
    from lfw.infra.hardware import visible_gpus
    from lfw.preflight.memory.choice import choose_for_stage
    from lfw.preflight.memory.planner import GIB, estimate, plan_input
    from lfw.preflight.memory.shapes import resolve_arch

    loaded = _loaded(recipe)
    r = loaded.recipe
    model_arch = resolve_arch(r.model.path, loaded.base_dir, arch)
    detected = [] if r.hardware.device == "cpu" else visible_gpus()
    world = gpus or (r.hardware.gpus if r.hardware.gpus != "auto" else max(len(detected), 1))
    gpu_bytes = (
        gpu_mem_gib * GIB if gpu_mem_gib else (min(g.memory_mib for g in detected) * 2**20 if detected else None)
    )
    stages = []
    for index, stage in enumerate(r.stages):
        training = r.stage_training(index)
        fixed = training.micro_batch_size if isinstance(training.micro_batch_size, int) else None
        inp = plan_input(r, index, model_arch, world, fixed or 1)
        choice = choose_for_stage(r, index, model_arch, world, gpu_bytes, margin) if gpu_bytes else None
        est = choice.estimate if choice else estimate(inp)
        stages.append(StagePlan(index, stage.stage, inp, est, choice, training.global_batch_size, training.cutoff_len))
    return MemoryPlan(model_arch, world, gpu_bytes, margin, stages)


def check_data(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    cutoff_len: int | None = None,
    media_dir: str | os.PathLike[str] | None = None,
    columns: dict[str, str] | None = None,
    tags: str | None = None,
    stage: str | None = None,
) -> DataReport:
    """Check every row of a data file or folder (`lfw data check`): the report lists each problem found.

    The keywords are the recipe's dataset fields; with a tokenizer, lengths are measured against `cutoff_len`.
    Raises `UserError` only for unusable arguments (missing path, unknown format).
    """
    from lfw.preflight.data.check import check_dataset

    return check_dataset(
        path, fmt, tokenizer_dir, cutoff_len, media_dir=media_dir, columns=columns, tags=tags, stage=stage
    )


def run(
    recipe: LoadedRecipe | str | os.PathLike[str],
    *,
    gpus: int | None = None,
    dry_run: bool = False,
    resume: bool = False,
    stream: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    nnodes: int | None = None,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
) -> int:
    """Check, render into a new run directory and launch every stage (`lfw run`); returns the exit code."""
    from lfw.launch.runner import execute, resume_run
    from lfw.launch.target import require_rendezvous

    loaded = _loaded(recipe)
    target = target_for(
        loaded, gpus, nnodes=nnodes, node_rank=node_rank, master_addr=master_addr, master_port=master_port
    )
    require_rendezvous(target)
    root = Path(output_dir) if output_dir is not None else None
    if resume:
        return resume_run(loaded, target, stream=stream, output_root=root)
    return execute(loaded, target, dry_run=dry_run, stream=stream, output_root=root)
