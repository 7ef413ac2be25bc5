"""The context of one stage's train YAML: everything train.yaml.j2 reads, built outside `render()`.

`RunFacts` holds what every stage of a run shares (dataset_info, DeepSpeed file, the base model); `stage_context`
resolves one stage: its training block with the fast defaults filled in (micro batch and gradient checkpointing
from the memory planner, packing, liger kernel, workers, optimizer: lfw.rendering.speed), the models it trains
and compares against (lfw.rendering.stage_models), batch arithmetic and precision.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lfw import __version__
from lfw.infra.errors import Problem, ProblemCollector, UserError
from lfw.launch.target import Target, gradient_accumulation, precision_flags
from lfw.recipe.lf_keys import KeySet
from lfw.recipe.loader import LoadedRecipe
from lfw.recipe.schema import Recipe, TrainingSpec
from lfw.rendering.checks import check_reference_tokens
from lfw.rendering.dataset_info import media_dir
from lfw.rendering.speed import SpeedKeys, liger_keys, optimizer_keys, packing_keys, worker_keys
from lfw.rendering.stage_models import stage_models
from lfw.rendering.tracking import report_to

GPU_MEM_ENV = "LFW_GPU_MEM_GIB"


@dataclass(frozen=True)
class RunFacts:
    """What every stage of one rendering shares."""

    loaded: LoadedRecipe
    target: Target
    run_dir: Path
    keys: KeySet
    info: dict[str, Any]
    names_per_stage: list[list[str]]
    deepspeed_path: str | None
    model_path: str
    model_config: dict[str, Any] | None  # config.json of a local base model

    @property
    def prequantized(self) -> str | None:
        """A GPTQ/AWQ checkpoint holds one adapter only, like a 4-bit base."""
        return ((self.model_config or {}).get("quantization_config") or {}).get("quant_method")


def warmup(training: TrainingSpec, keys: KeySet) -> tuple[str | None, float | int | None]:
    """transformers 5 takes a ratio as a float warmup_steps and deprecates (5.17: rejects) warmup_ratio."""
    if training.warmup_steps is not None:
        return "warmup_steps", training.warmup_steps
    if training.warmup_ratio is None:
        return None, None
    if int(keys.transformers.split(".")[0]) >= 5 or "warmup_ratio" not in keys:
        return "warmup_steps", training.warmup_ratio
    return "warmup_ratio", training.warmup_ratio


def gpu_memory(target: Target) -> float | None:
    """Bytes per GPU the planner plans for: LFW_GPU_MEM_GIB (rendering for GPUs elsewhere), else the smallest GPU
    used here; None when neither is known."""
    env_gib = os.environ.get(GPU_MEM_ENV)
    if env_gib:
        try:
            return float(env_gib) * 2**30
        except ValueError:
            raise UserError(
                [Problem(f"environment {GPU_MEM_ENV}={env_gib}", "expected GiB per GPU", f"e.g. {GPU_MEM_ENV}=80")]
            ) from None
    used = [gpu.memory_mib for gpu in target.gpus[: target.procs_per_node] if gpu.memory_mib]
    return min(used) * 2**20 if used else None


def data_bytes(run: RunFacts, index: int) -> int | None:
    """Size on disk of a stage's local data files (None when any of it is hub data; a missing file counts 0:
    `lfw run` refuses it anyway, and the rendering stays the same wherever the data is not)."""
    total = 0
    for name in run.names_per_stage[index]:
        file_name = run.info[name].get("file_name")
        if file_name is None:
            return None
        path = Path(file_name)
        files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path] if path.is_file() else []
        total += sum(p.stat().st_size for p in files)
    return total


def _planned(run: RunFacts, index: int, training: TrainingSpec, liger: bool, out: SpeedKeys) -> TrainingSpec:
    """Micro batch and gradient checkpointing on GPUs: the planner's where `auto` and the GPU memory is known."""
    from lfw.preflight.memory.choice import choose
    from lfw.preflight.memory.planner import gib, plan_input
    from lfw.preflight.memory.shapes import resolve_arch

    micro, gc = training.micro_batch_size, training.gradient_checkpointing
    if training.packing == "neat" and run.loaded.recipe.model.flash_attn == "fa2" and micro == "auto":
        micro = 1  # LLaMA-Factory's FA2 neat packing asserts a batch of one (the varlen path)
        out.note("micro batch 1: neat packing with FlashAttention-2 takes one packed sequence per pass")
    gpu_bytes = gpu_memory(run.target)
    arch = None
    if gpu_bytes is not None and "auto" in (micro, gc):
        try:
            arch = resolve_arch(run.loaded.recipe.model.path, run.loaded.base_dir)
        except UserError as err:
            out.note(f"no memory plan: {err.problems[0].message}")
    if arch is None or gpu_bytes is None:
        if "auto" in (micro, gc):
            why = "the GPU memory is unknown here" if gpu_bytes is None else "the model's shape is unknown"
            out.note(
                f"{why}: micro batch 1 with gradient checkpointing where auto; set {GPU_MEM_ENV} (GiB per GPU) "
                "or training.micro_batch_size / gradient_checkpointing"
            )
        return training.model_copy(
            update={"micro_batch_size": 1 if micro == "auto" else micro, "gradient_checkpointing": gc is not False}
        )
    inp = replace(plan_input(run.loaded.recipe, index, arch, run.target.world_size, 1), liger=liger)
    choice = choose(
        inp,
        training.global_batch_size,
        gpu_bytes,
        micro=None if micro == "auto" else int(micro),
        checkpointing=None if gc == "auto" else bool(gc),
    )
    picked = choice.estimate.inp
    where = f"{gpu_bytes / 2**30:.0f} GiB per GPU, peak {gib(choice.estimate.total)} GiB with 10% kept free"
    if choice.micro_batch is None:
        fix = choice.notes[-1] if choice.notes else "`lfw plan` prints the OOM ladder"
        out.note(f"does not fit ({where}); {fix}")
    elif micro == "auto":
        out.note(f"micro batch {picked.micro_batch}: the memory planner's pick ({where})")
    if gc == "auto":
        state = "on: memory needs it" if picked.gradient_checkpointing else "off: memory does not need it"
        out.note(f"gradient checkpointing {state} (planner)")
    return training.model_copy(
        update={
            "micro_batch_size": picked.micro_batch if micro == "auto" else micro,
            "gradient_checkpointing": picked.gradient_checkpointing,
        }
    )


def _packing_asked(recipe: Recipe, index: int) -> bool:
    """Whether the recipe or the stage set packing (Recipe.stage_training resolves auto, so ask the blocks)."""
    overrides = recipe.stages[index].training
    return (overrides is not None and overrides.packing is not None) or recipe.training.packing != "auto"


def resolve_training(run: RunFacts, index: int, where: str) -> tuple[TrainingSpec, SpeedKeys]:
    """The stage's training block with every `auto` resolved, and the fast-default LF keys with their reasons."""
    recipe, target = run.loaded.recipe, run.target
    training = recipe.stage_training(index)
    stage = recipe.stages[index].stage
    out = SpeedKeys()
    if target.device == "cpu" and training.packing == "neat" and not _packing_asked(recipe, index):
        training = training.model_copy(update={"packing": False})
        out.note("packing off on CPU: each step stays as light as unpacked; training.packing: neat packs here too")
    packing_keys(stage, training.packing, recipe.model.flash_attn, where, out)
    model_type = (run.model_config or {}).get("model_type")
    liger = liger_keys(training.liger_kernel, target.device, model_type, bool(target.gpus), where, out)
    optimizer_keys(out)
    worker_keys(training, target.device, target.procs_per_node, out, data_bytes(run, index))
    if target.device == "cpu":
        if training.gradient_checkpointing == "auto":
            out.note("gradient checkpointing off: no recompute on CPU (host memory is not planned)")
        training = training.model_copy(
            update={
                "micro_batch_size": 1 if training.micro_batch_size == "auto" else training.micro_batch_size,
                "gradient_checkpointing": training.gradient_checkpointing is True,
            }
        )
    else:
        training = _planned(run, index, training, liger, out)
    if training.packing == "neat" and recipe.model.flash_attn == "fa2" and training.micro_batch_size != 1:
        out.problems.append(
            Problem(
                f"{where}.micro_batch_size",
                "LLaMA-Factory's neat packing with FlashAttention-2 takes batch 1",
                "use micro_batch_size: 1 (or auto), or flash_attn: sdpa",
            )
        )
    for key in list(out.keys):
        if key in recipe.llamafactory:  # the passthrough's own value replaces the default
            out.drop(key)
    return training, out


def _tracking(run: RunFacts, stage_name: str) -> dict[str, Any]:
    """The trackers' keys: SwanLab's through LF, the rest through transformers' report_to; one run name per stage."""
    swanlab = run.loaded.recipe.tracking.swanlab
    experiment = swanlab.experiment if swanlab and swanlab.experiment else run.run_dir.name
    return {
        "swanlab": swanlab,
        "swanlab_logdir": str(run.run_dir / "swanlog"),
        "report_to": report_to(run.loaded.recipe),
        "run_name": f"{run.run_dir.name}-{stage_name}",
        "swanlab_run_name": f"{experiment}-{stage_name}",
    }


def stage_context(
    run: RunFacts, index: int, earlier_outputs: list[Path], problems: ProblemCollector
) -> dict[str, Any] | None:
    """Everything train.yaml.j2 reads for stage `index` (None, with problems added, when it cannot render)."""
    loaded, target = run.loaded, run.target
    recipe = loaded.recipe
    stage = recipe.stages[index]
    where = f"stages[{index}].training" if stage.training else "training"
    try:
        training, speed = resolve_training(run, index, where)
        grad_accum = gradient_accumulation(training, target, where)
        precision = precision_flags(training, target, where)
    except UserError as err:
        problems.problems.extend(err.problems)
        return None
    problems.problems.extend(speed.problems)
    stage_name = recipe.stage_dir_name(index)
    models = stage_models(recipe, index, run.model_path, [str(p) for p in earlier_outputs], run.prequantized)
    check_reference_tokens(loaded, models, stage_name, problems)
    warmup_key, warmup_value = warmup(training, run.keys)
    method = recipe.method
    context = {
        "lfw_version": __version__,
        "recipe_path": loaded.display_path,
        "overrides": loaded.overrides,
        "stage_number": index + 1,
        "stage_count": len(recipe.stages),
        "target_summary": target.describe(),
        "run_hint": f"lfw run {loaded.display_path}",
        "lf_version": run.keys.llamafactory,
        "tf_version": run.keys.transformers,
        "stage": stage,
        "model": recipe.model,
        "model_path": models.base,
        "models": models,
        "quantization": method.quantization,
        "finetuning_type": models.finetuning_type,
        "lora": method.lora,
        "lora_alpha": method.lora.alpha or 2 * method.lora.rank,
        "freeze_trainable_layers": method.freeze_trainable_layers,
        "deepspeed_path": run.deepspeed_path,
        "dataset_dir": str(run.run_dir),
        "dataset_names": run.names_per_stage[index],
        "media_dir": media_dir(loaded, index),
        "training": training,
        "speed": speed,
        "output_dir": str(run.run_dir / stage_name),
        **_tracking(run, stage_name),
        "grad_accum": grad_accum,
        "warmup_key": warmup_key,
        "warmup_value": warmup_value,
        "precision": precision,
        "distributed": target.world_size > 1,
        "passthrough": recipe.llamafactory,
    }
    return context
