"""The known bad combinations of a loaded recipe, each a small named check with its fix.

Every check takes the same `RecipeFacts` (the recipe, the GPUs, the installed versions, the model's
config.json) and returns the checks it has something to say about: nothing when it does not apply. The
loader already refuses llamafactory.ddp_find_unused_parameters (lfw renders it) and 8-bit or non-bnb
quantization under ZeRO-3, so the checks of those only say that they are handled.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfw.infra.errors import UserError
from lfw.infra.hardware import GPU
from lfw.infra.versions import installed_version
from lfw.preflight.doctor.context import check_context_length, model_config
from lfw.preflight.doctor.result import FAIL, OK, WARN, Check, VersionOf
from lfw.preflight.doctor.templates import check_qwen3_thinking, check_template_family, check_template_registry
from lfw.recipe.loader import LoadedRecipe
from lfw.recipe.schema import Recipe, TrainingSpec

ZERO3 = ("z3", "z3_offload")


@dataclass(frozen=True)
class RecipeFacts:
    """What the recipe checks look at, gathered once."""

    loaded: LoadedRecipe
    version_of: VersionOf
    gpus: list[GPU]
    world: int  # processes the run would start; 0 on CPU
    trainings: list[TrainingSpec]  # each stage's training block, overrides applied
    config: dict[str, Any] | None  # the model's config.json, None for a hub id

    @classmethod
    def of(
        cls,
        loaded: LoadedRecipe,
        version_of: VersionOf = installed_version,
        gpus: list[GPU] | None = None,
        gpu_count: int | None = None,
    ) -> RecipeFacts:
        recipe, gpus = loaded.recipe, gpus or []
        hw = recipe.hardware
        world = gpu_count or (hw.gpus if hw.gpus != "auto" else max(len(gpus), 1))
        trainings = [recipe.stage_training(i) for i in range(len(recipe.stages))]
        config, _ = model_config(recipe, loaded.base_dir)
        return cls(loaded, version_of, gpus, 0 if hw.device == "cpu" else world, trainings, config)

    @property
    def recipe(self) -> Recipe:
        return self.loaded.recipe

    @property
    def base_dir(self) -> Path:
        return self.loaded.base_dir

    @property
    def deepspeed(self) -> str:
        return self.recipe.hardware.deepspeed


def check_ddp_lora(facts: RecipeFacts) -> list[Check]:
    """DDP + LoRA + gradient checkpointing crashes unless ddp_find_unused_parameters is false: lfw renders it."""
    lora = facts.recipe.method.type in ("lora", "qlora")
    any_gc = any(t.gradient_checkpointing for t in facts.trainings)
    if facts.world > 1 and lora and any_gc and facts.deepspeed == "none":
        detail = "handled: lfw renders ddp_find_unused_parameters: false"
        return [Check("DDP + LoRA + gradient checkpointing", OK, detail)]
    return []


def check_deepspeed_one_gpu(facts: RecipeFacts) -> list[Check]:
    """LLaMA-Factory refuses DeepSpeed on one GPU without torchrun: lfw launches with FORCE_TORCHRUN=1."""
    if facts.deepspeed != "none" and facts.world == 1:
        return [Check("DeepSpeed on one GPU", OK, "handled: lfw launches with FORCE_TORCHRUN=1 (torchrun)")]
    return []


def check_deepspeed_installed(facts: RecipeFacts) -> list[Check]:
    ds = facts.deepspeed
    if ds == "none" or facts.version_of("deepspeed"):
        return []
    return [
        Check(
            "DeepSpeed installed",
            FAIL,
            f"hardware.deepspeed: {ds} but deepspeed is missing",
            "pip install deepspeed (LLaMA-Factory 0.9.5 caps it at 0.16.9)",
        )
    ]


def check_qlora_zero3(facts: RecipeFacts) -> list[Check]:
    if facts.recipe.method.quantization is None or facts.deepspeed not in ZERO3:
        return []
    detail = "4-bit: LLaMA-Factory stores the quantized weights as bf16 (bnb_4bit_quant_storage)"
    detail += " so ZeRO-3 can partition them"
    return [Check("QLoRA + ZeRO-3", OK, detail)]


def check_bitsandbytes(facts: RecipeFacts) -> list[Check]:
    if facts.recipe.method.quantization is None or facts.version_of("bitsandbytes"):
        return []
    return [Check("bitsandbytes", FAIL, "QLoRA needs bitsandbytes", "pip install bitsandbytes")]


def check_prequantized_zero3(facts: RecipeFacts) -> list[Check]:
    """A GPTQ/AWQ checkpoint cannot be sharded by ZeRO-3/FSDP: it fails at load, after the queue."""
    quant_method = ((facts.config or {}).get("quantization_config") or {}).get("quant_method")
    if quant_method not in ("gptq", "awq") or facts.deepspeed not in ZERO3:
        return []
    return [
        Check(
            "pre-quantized model + ZeRO-3",
            FAIL,
            f"{facts.recipe.model.path} is {quant_method}-quantized: ZeRO-3/FSDP cannot shard it",
            "use hardware.deepspeed: z2 (or none), or start from the unquantized model",
        )
    ]


def check_flash_attn(facts: RecipeFacts) -> list[Check]:
    """fa2 needs flash-attn installed; auto falls back to sdpa without it."""
    asked = facts.recipe.model.flash_attn
    if facts.version_of("flash-attn") or asked not in ("fa2", "auto"):
        return []
    if asked == "auto":
        return [Check("flash attention", OK, "flash-attn missing: auto uses sdpa")]
    return [
        Check(
            "flash attention",
            FAIL,
            "model.flash_attn: fa2 but flash-attn is not installed",
            "model.flash_attn: auto or sdpa (PyTorch SDPA, no install needed)",
        )
    ]


def check_liger_kernel(facts: RecipeFacts) -> list[Check]:
    if not any(t.liger_kernel is True for t in facts.trainings) or facts.version_of("liger-kernel"):
        return []
    return [
        Check(
            "liger kernel",
            FAIL,
            "training.liger_kernel: true but liger-kernel is missing",
            "pip install liger-kernel, or liger_kernel: false",
        )
    ]


def check_bf16_gpu(facts: RecipeFacts) -> list[Check]:
    no_bf16 = [gpu.name for gpu in facts.gpus if not gpu.bf16]
    if not no_bf16 or not any(t.precision == "bf16" for t in facts.trainings):
        return []
    detail = f"precision: bf16 but {no_bf16[0]} has no bf16"
    return [Check("bf16 on this GPU", FAIL, detail, "training.precision: fp16 (or auto)")]


def check_cutoff_len(facts: RecipeFacts) -> list[Check]:
    return check_context_length(facts.recipe, facts.base_dir)


def check_dpo_memory(facts: RecipeFacts) -> list[Check]:
    """DPO needs about twice SFT's memory (chosen + rejected, a reference pass): say so with numbers."""
    from lfw.preflight.memory.planner import GIB, estimate, plan_input
    from lfw.preflight.memory.shapes import resolve_arch

    recipe = facts.recipe
    dpo = [i for i, s in enumerate(recipe.stages) if s.stage in ("dpo", "kto")]
    if not dpo:
        return []
    try:
        arch = resolve_arch(recipe.model.path, facts.base_dir)
    except UserError:
        detail = "DPO needs about twice the memory of SFT (chosen + rejected, reference)"
        return [Check("DPO memory", WARN, detail, "run lfw plan with --arch to size it")]
    inp = plan_input(recipe, dpo[0], arch, max(facts.world, 1))
    dpo_total = estimate(inp).total
    sft_total = estimate(dataclasses.replace(inp, stage="sft", pref_loss=None)).total
    detail = f"{dpo_total / GIB:.1f} GiB per GPU vs {sft_total / GIB:.1f} GiB for SFT at the same micro batch"
    memory = [gpu.memory_mib for gpu in facts.gpus if gpu.memory_mib]
    if memory and dpo_total > min(memory) * 2**20 * 0.9:
        return [
            Check(
                "DPO memory",
                FAIL,
                detail + f"; the GPU has {min(memory) / 1024:.0f} GiB",
                "see lfw plan for the OOM ladder (micro batch 1, QLoRA, shorter cutoff_len)",
            )
        ]
    return [Check("DPO memory", WARN, detail, "check with lfw plan before launching")]


# In the order `lfw doctor` prints them.
RECIPE_CHECKS: tuple[Callable[[RecipeFacts], list[Check]], ...] = (
    check_ddp_lora,
    check_deepspeed_one_gpu,
    check_deepspeed_installed,
    check_qlora_zero3,
    check_bitsandbytes,
    check_prequantized_zero3,
    check_qwen3_thinking,
    check_template_family,
    check_template_registry,
    check_flash_attn,
    check_liger_kernel,
    check_bf16_gpu,
    check_cutoff_len,
    check_dpo_memory,
)


def check_recipe(
    loaded: LoadedRecipe,
    version_of: VersionOf = installed_version,
    gpus: list[GPU] | None = None,
    gpu_count: int | None = None,
) -> list[Check]:
    """Every recipe check, in order, on one loaded recipe."""
    facts = RecipeFacts.of(loaded, version_of, gpus, gpu_count)
    return [check for run_check in RECIPE_CHECKS for check in run_check(facts)]
