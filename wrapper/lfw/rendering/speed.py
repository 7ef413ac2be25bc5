"""Fast defaults: what `auto` means for packing, the liger kernel, data-loader and tokenization workers, the optimizer.

A bare recipe should run near the GPU's limit without hand tuning (issue [fast]). Each rule here turns one recipe
field into LLaMA-Factory 0.9.5 keys plus a comment line that says why, so `lfw render` shows every choice; a
value in the recipe overrides it, and a key given in the `llamafactory` passthrough replaces the default line of
the same key. The micro batch and gradient checkpointing are the memory planner's (lfw.preflight.memory.planner).
Pure: no torch, no click.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lfw.infra.errors import Problem
from lfw.infra.versions import installed_version

CPUS_ENV = "LFW_CPUS"
MAX_LOADER_WORKERS = 4  # per GPU: enough to keep packed, pre-tokenized batches (and neat packing's masks) ahead
# A cap, so that a login node and a compute node with at least this many CPUs give the same tokenized-cache key
# (LLaMA-Factory packs within each worker's shard, so the count changes the packed rows).
MAX_TOKENIZE_WORKERS = 16
# Each tokenization worker is a process that imports the tokenizer and, with packing, packs its own shard: below
# this much data per worker, the start-up costs more than it saves (and tiny pt data would pack into nothing).
BYTES_PER_TOKENIZE_WORKER = 8 * 2**20
FUSED_ADAMW = "adamw_torch_fused"
# model_type values LLaMA-Factory 0.9.5 patches with liger kernels (model/model_utils/liger_kernel.py); others
# only get a warning from LF, so lfw leaves the kernel off for them.
LIGER_MODEL_TYPES = frozenset(
    {"gemma", "gemma2", "gemma3", "gemma3_text", "glm", "glm4", "glm4v", "granite", "llama", "llava", "mistral",
     "mixtral", "mllama", "olmo2", "paligemma", "phi3", "qwen2", "qwen2_vl", "qwen2_5_vl", "qwen3", "qwen3_moe",
     "qwen3_next", "qwen3_5", "gpt_oss"}
)  # fmt: skip


@dataclass
class SpeedKeys:
    """LF keys chosen by the fast defaults (in render order), the comment lines that explain them, and problems."""

    keys: dict[str, Any] = field(default_factory=dict)
    reasons: list[tuple[str | None, str]] = field(default_factory=list)  # (the key it explains, comment)
    problems: list[Problem] = field(default_factory=list)

    @property
    def notes(self) -> list[str]:
        return [text for _, text in self.reasons]

    def note(self, text: str, key: str | None = None) -> None:
        self.reasons.append((key, text))

    def drop(self, key: str) -> None:
        """The passthrough sets `key` itself: no default line, no reason for it."""
        self.keys.pop(key, None)
        self.reasons = [(k, text) for k, text in self.reasons if k != key]


def available_cpus() -> int:
    """CPUs this process may use (`$LFW_CPUS` when set, e.g. to render for another machine)."""
    env = os.environ.get(CPUS_ENV, "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def packing_keys(stage: str, packing: Any, flash_attn: str, where: str, out: SpeedKeys) -> None:
    """neat_packing / packing for a stage whose `packing` is already resolved (Recipe.stage_training)."""
    if packing == "neat":
        if stage != "sft":
            out.problems.append(
                Problem(
                    f"{where}.packing",
                    f"neat packing is for sft only (LLaMA-Factory refuses it for {stage})",
                    "use packing: plain or false for this stage",
                )
            )
            return
        out.keys["neat_packing"] = True
        how = "FlashAttention-2 varlen" if flash_attn == "fa2" else "SDPA with a block-diagonal 4D mask"
        out.note(f"neat packing: samples share cutoff_len sequences, none attends to another ({how})", "neat_packing")
        out.note("  a step takes global_batch_size packed sequences: fewer, larger steps per epoch", "neat_packing")
    elif packing == "plain":
        if stage == "pt":
            out.note("packing: LLaMA-Factory packs pre-training text into cutoff_len blocks itself", "packing")
        else:
            out.keys["packing"] = True
            out.note("plain packing (asked for): samples in one sequence attend to each other", "packing")
    elif stage == "pt":
        out.keys["packing"] = False


def liger_keys(setting: Any, device: str, model_type: str | None, gpus_here: bool, where: str, out: SpeedKeys) -> bool:
    """enable_liger_kernel where it can run; `gpus_here`: the GPUs are on this machine (so is the environment)."""
    reason = None
    if device == "cpu":
        reason = "its Triton kernels need a CUDA GPU"
    elif model_type is not None and model_type not in LIGER_MODEL_TYPES:
        reason = f"LLaMA-Factory 0.9.5 has no liger kernel for model type {model_type}"
    elif gpus_here and installed_version("liger-kernel") is None:
        reason = "liger-kernel is not installed here (pip install 'lfw[train]')"
    if reason is None:
        on = setting is not False
        if on:
            out.keys["enable_liger_kernel"] = True
            out.note(
                "liger kernel: fused RMSNorm/SwiGLU/RoPE and, for sft/pt, linear cross-entropy", "enable_liger_kernel"
            )
        return on
    if setting is True:
        out.problems.append(
            Problem(f"{where}.liger_kernel", f"the liger kernel cannot run here: {reason}", "use liger_kernel: auto")
        )
    elif setting == "auto":
        out.note(f"liger kernel off: {reason}")
    return False


def worker_keys(
    training: Any, device: str, procs_per_node: int, out: SpeedKeys, data_bytes: int | None, cpus: int | None = None
) -> None:
    """dataloader_num_workers from the CPU count; preprocessing_num_workers from it and the data's size on disk
    (`data_bytes`; None: unknown, e.g. hub data)."""
    cpus = available_cpus() if cpus is None else cpus
    loader = training.dataloader_workers
    if loader == "auto":
        loader = 0 if device == "cpu" else max(1, min(MAX_LOADER_WORKERS, cpus // max(procs_per_node, 1)))
        why = "the main process: workers would take cores from training" if device == "cpu" else f"{cpus} CPUs"
        out.note(f"data-loader workers per process: {loader} ({why})", "dataloader_num_workers")
    out.keys["dataloader_num_workers"] = loader
    tokenize = training.preprocessing_workers
    if tokenize == "auto":
        tokenize = min(MAX_TOKENIZE_WORKERS, cpus)
        why = f"min({MAX_TOKENIZE_WORKERS}, {cpus} CPUs"
        if data_bytes is not None:
            tokenize = min(tokenize, max(1, -(-data_bytes // BYTES_PER_TOKENIZE_WORKER)))
            why += f", one per {BYTES_PER_TOKENIZE_WORKER // 2**20} MiB of data"
        if tokenize == 1:
            tokenize = None
            out.note(f"tokenization in one process ({why}))")
        else:
            out.note(f"tokenization workers: {tokenize} ({why}))", "preprocessing_num_workers")
    if tokenize is not None:
        out.keys["preprocessing_num_workers"] = tokenize


def optimizer_keys(out: SpeedKeys) -> None:
    """Fused AdamW: one kernel per parameter group (transformers 5.6's own default with torch >= 2.8, said here)."""
    out.keys["optim"] = FUSED_ADAMW
