"""Which models LLaMA-Factory 0.9.5 builds for each stage of a recipe: the one description render and plan share.

LLaMA-Factory decides this in `model/adapter.py` and `train/trainer_utils.create_ref_model`, and the rules are
easy to get wrong by hand:

* LoRA on a plain base merges every earlier adapter and creates a new one (`create_new_adapter`); the DPO/KTO
  reference is then the policy with its adapter switched off, i.e. the base with the earlier adapters merged.
* On a quantized base, and under DeepSpeed ZeRO-3, adapters cannot be merged (`is_mergeable = False`): LF accepts
  exactly one adapter and keeps training it, ignoring `create_new_adapter`. So a later stage resumes the previous
  stage's adapter, and a reference that should be the previous stage's model must be loaded as a separate copy
  (`ref_model` = base, `ref_model_adapters` = that adapter, quantized like the policy).
* Full and freeze stages continue from the previous stage's saved weights; their reference is a second copy.
* DPO with `pref_loss` orpo or simpo uses no reference model at all (`use_ref_model`).

Pure: no click, no torch, no Jinja.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from lfw.recipe.schema import Recipe

# "none": the loss needs no reference; "policy": the trained model with its adapter disabled (no extra memory);
# "copy": LLaMA-Factory loads a second, frozen model.
Reference = Literal["none", "policy", "copy"]


@dataclass(frozen=True)
class StageModels:
    """The policy LLaMA-Factory trains in one stage and the reference its preference loss compares against."""

    base: str  # model_name_or_path: the original model, or the previous full/freeze stage's output
    finetuning_type: str  # lora | full | freeze
    quant_bits: int | None  # on-the-fly quantization of the base (QLoRA)
    merged: tuple[str, ...]  # earlier adapters merged into the base before training
    resumed: str | None  # the earlier adapter that keeps training (quantized base or ZeRO-3)
    single_adapter_reason: str | None  # why adapters cannot stack in this run, if they cannot
    reference: Reference
    ref_adapters: tuple[str, ...] = ()  # adapters of a "copy" reference
    ref_quant_bits: int | None = None  # quantization of a "copy" reference

    @property
    def adapters(self) -> tuple[str, ...]:
        """adapter_name_or_path as LLaMA-Factory reads it: merged ones first, the resumed one last."""
        return self.merged + ((self.resumed,) if self.resumed else ())

    def describe_reference(self) -> str:
        if self.reference == "none":
            return "none (the loss needs no reference model)"
        if self.reference == "policy":
            return "the policy with its adapter disabled (no second copy)"
        bits = f"{self.ref_quant_bits}-bit " if self.ref_quant_bits else ""
        extra = f" + adapter {', '.join(self.ref_adapters)}" if self.ref_adapters else ""
        return f"a second, frozen {bits}copy of {self.base}{extra}"


def single_adapter_reason(
    method: str,
    quant_bits: int | None,
    deepspeed: str,
    prequantized: str | None = None,
    passthrough: dict | None = None,
) -> str | None:
    """Why LLaMA-Factory can hold only one adapter in this run (None when adapters stack): model/adapter.py."""
    if method not in ("lora", "qlora"):
        return None
    if quant_bits:
        return f"a {quant_bits}-bit quantized base"
    if prequantized:
        return f"a {prequantized}-quantized base model"
    if deepspeed in ("z3", "z3_offload"):
        return "DeepSpeed ZeRO-3"
    for key, what in (("use_unsloth", "Unsloth"), ("use_kt", "KTransformers")):
        if (passthrough or {}).get(key):
            return what
    return None


def uses_reference(stage: str, pref_loss: str | None) -> bool:
    """LLaMA-Factory's `use_ref_model` for DPO, and KTO's unconditional reference."""
    return stage == "kto" or (stage == "dpo" and pref_loss not in ("orpo", "simpo"))


def reference_kind(stage: str, pref_loss: str | None, method: str, chained: bool, single_adapter: bool) -> Reference:
    """The reference LLaMA-Factory builds for a stage; `chained`: earlier stages trained before this one."""
    if not uses_reference(stage, pref_loss):
        return "none"
    if method not in ("lora", "qlora"):
        return "copy"
    if chained and single_adapter:
        return "copy"  # the previous stage's model, loaded beside the adapter that keeps training
    return "policy"


def stage_models(
    recipe: Recipe, index: int, model_path: str, earlier_outputs: list[str], prequantized: str | None = None
) -> StageModels:
    """The models of stage `index`, given the base model, the earlier stages' output folders and, for a base whose
    config.json says it is already quantized (GPTQ, AWQ, ...), that method."""
    stage = recipe.stages[index]
    method = recipe.method.type
    bits = recipe.method.quantization.bits if recipe.method.quantization else None
    reason = single_adapter_reason(method, bits, recipe.hardware.deepspeed, prequantized, recipe.llamafactory)
    reference = reference_kind(stage.stage, stage.pref_loss, method, bool(earlier_outputs), reason is not None)
    if method not in ("lora", "qlora"):
        base = earlier_outputs[-1] if earlier_outputs else model_path
        return StageModels(base=base, finetuning_type=method, quant_bits=None, merged=(), resumed=None,
                           single_adapter_reason=None, reference=reference)  # fmt: skip
    common: dict[str, Any] = {
        "base": model_path, "finetuning_type": "lora", "quant_bits": bits, "single_adapter_reason": reason
    }  # fmt: skip
    if not earlier_outputs:
        return StageModels(**common, merged=(), resumed=None, reference=reference)
    if reason is None:
        return StageModels(**common, merged=tuple(earlier_outputs), resumed=None, reference=reference)
    # One adapter only: it keeps training, and the previous stage's model is a separate frozen reference.
    previous = earlier_outputs[-1]
    copy = reference == "copy"
    return StageModels(**common, merged=(), resumed=previous, reference=reference,
                       ref_adapters=(previous,) if copy else (), ref_quant_bits=bits if copy else None)  # fmt: skip
