"""Choosing from the memory estimates: the largest micro batch that fits, whether gradient checkpointing is needed,
the ZeRO stage that would fit when nothing does, and the OOM ladder. What `micro_batch_size: auto` and
`gradient_checkpointing: auto` render, and what `lfw plan` prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from lfw.preflight.memory.planner import SAFETY_MARGIN, Estimate, PlanInput, estimate, gib, plan_input
from lfw.preflight.memory.shapes import ModelArch

if TYPE_CHECKING:
    from lfw.recipe.schema import Recipe


# ---- choosing the micro batch ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """The planner's pick: micro batch, accumulation, the estimate at that micro batch, and any note."""

    micro_batch: int | None
    grad_accum: int | None
    estimate: Estimate
    notes: list[str] = field(default_factory=list)


def candidate_micro_batches(global_batch: int, world_size: int) -> list[int]:
    """Micro batches that keep the global batch exactly: micro x world x accumulation == global."""
    per_gpu = global_batch // world_size if global_batch % world_size == 0 else 0
    return [m for m in range(1, per_gpu + 1) if per_gpu % m == 0]


def choose_micro_batch(inp: PlanInput, global_batch: int, gpu_bytes: float, margin: float = SAFETY_MARGIN) -> Choice:
    """The largest micro batch that fits `gpu_bytes` with `margin` and divides the global batch."""
    notes = []
    candidates = candidate_micro_batches(global_batch, inp.world_size)
    if not candidates:
        notes.append(
            f"global batch {global_batch} is not divisible by {inp.world_size} GPUs: use a multiple of {inp.world_size}"
        )
        candidates = [1]
    best: Estimate | None = None
    best_micro = None
    for micro in candidates:
        est = estimate(replace(inp, micro_batch=micro))
        if est.fits(gpu_bytes, margin):
            best, best_micro = est, micro
        else:
            break  # memory grows with the micro batch
    if best is None or best_micro is None:
        return Choice(None, None, estimate(replace(inp, micro_batch=1)), notes)
    # Say when a larger, non-dividing micro batch would have fit too.
    nxt = best_micro + 1
    while nxt <= global_batch and nxt in candidates:
        nxt += 1
    if nxt <= global_batch // max(inp.world_size, 1) and estimate(replace(inp, micro_batch=nxt)).fits(
        gpu_bytes, margin
    ):
        notes.append(
            f"micro batch {nxt} would fit too but does not divide global batch {global_batch} over "
            f"{inp.world_size} GPU(s)"
        )
    per_step = best_micro * inp.world_size
    accum = global_batch // per_step if global_batch % per_step == 0 else None
    return Choice(best_micro, accum, best, notes)


# Gradient checkpointing costs a recomputed forward pass (about a third more compute). It pays only when the micro
# batch that fits without it is too small to keep the GPU busy: below about 2^23 tokens x hidden size per forward
# pass (8192 tokens at hidden 1024, 1638 at hidden 5120), and only when it at least doubles the micro batch.
# A judgment, to be confirmed by the GPU benchmarks (scripts/bench).
BUSY_TOKENS_X_HIDDEN = 2**23


def fixed_choice(inp: PlanInput, global_batch: int, gpu_bytes: float, margin: float = SAFETY_MARGIN) -> Choice:
    """A micro batch the recipe fixed: its estimate, and the accumulation when it divides the global batch."""
    est = estimate(inp)
    per_step = inp.micro_batch * max(inp.world_size, 1)
    accum = global_batch // per_step if global_batch % per_step == 0 else None
    return Choice(inp.micro_batch if est.fits(gpu_bytes, margin) else None, accum, est)


def _busy(choice: Choice, per_gpu: int) -> bool:
    """The micro batch is large enough that checkpointing cannot make the GPU much busier."""
    micro = choice.micro_batch or 0
    return micro >= per_gpu or choice.estimate.inp.tokens * choice.estimate.inp.arch.hidden >= BUSY_TOKENS_X_HIDDEN


def choose(
    inp: PlanInput,
    global_batch: int,
    gpu_bytes: float,
    margin: float = SAFETY_MARGIN,
    *,
    micro: int | None = None,
    checkpointing: bool | None = None,
) -> Choice:
    """The micro batch (None: the largest that fits) and gradient checkpointing (None: only when memory needs it)
    of one stage; the chosen estimate's input says which. Nothing fits: micro_batch None, checkpointing on, and a
    note with the ZeRO stage that would fit."""

    def pick(gc: bool) -> Choice:
        trial = replace(inp, gradient_checkpointing=gc, micro_batch=micro or 1)
        if micro is None:
            return choose_micro_batch(trial, global_batch, gpu_bytes, margin)
        return fixed_choice(trial, global_batch, gpu_bytes, margin)

    if checkpointing is not None:
        choice = pick(checkpointing)
    else:
        off = pick(False)
        per_gpu = max(global_batch // max(inp.world_size, 1), 1)
        if off.micro_batch is not None and (micro is not None or _busy(off, per_gpu)):
            choice = off
        else:
            on = pick(True)
            doubles = on.micro_batch is not None and on.micro_batch >= 2 * (off.micro_batch or 0)
            choice = on if doubles or off.micro_batch is None else off
    if choice.micro_batch is None:
        zero = suggest_zero(choice.estimate.inp, gpu_bytes, margin)  # at micro 1, or the recipe's fixed one
        if zero:
            choice = replace(choice, notes=[*choice.notes, zero])
    return choice


def suggest_zero(inp: PlanInput, gpu_bytes: float, margin: float = SAFETY_MARGIN) -> str | None:
    """The first ZeRO stage past the recipe's that fits this input (same micro batch, checkpointing on)."""
    order = ["none", "z0", "z2", "z3", "z3_offload"]
    candidates = ["z2", "z3", "z3_offload"] if inp.world_size > 1 else ["z3_offload"]  # one GPU: only offload helps
    if inp.quant_bits == 8:
        candidates = [c for c in candidates if c == "z2"]  # LLaMA-Factory quantizes under ZeRO-3 to 4 bits only
    for kind in candidates:
        if order.index(kind) <= order.index(inp.deepspeed):
            continue
        est = estimate(replace(inp, deepspeed=kind, gradient_checkpointing=True))
        if est.fits(gpu_bytes, margin):
            return f"hardware.deepspeed: {kind} fits (peak {gib(est.total)} GiB at micro batch {inp.micro_batch})"
    return None


@dataclass(frozen=True)
class LadderStep:
    action: str
    estimate: Estimate
    fits: bool


def oom_ladder(inp: PlanInput, gpu_bytes: float, margin: float = SAFETY_MARGIN) -> list[LadderStep]:
    """The OOM ladder of seed 003, applied cumulatively, with each step's estimated peak.

    Order by effect: QLoRA, a shorter cutoff_len, micro batch 1 with more accumulation, the liger kernel with
    gradient checkpointing (flash attention is already assumed: SDPA keeps no T^2 matrix), ZeRO-3 offload.
    """
    steps = []
    current = inp
    if current.method != "qlora":
        current = replace(current, method="qlora", quant_bits=4)
        steps.append(("method.type: qlora (4-bit base)", current))
    if current.cutoff_len > 512:
        current = replace(current, cutoff_len=max(512, current.cutoff_len // 2))
        steps.append((f"training.cutoff_len: {current.cutoff_len} (check coverage with lfw data check)", current))
    if current.micro_batch > 1:
        current = replace(current, micro_batch=1)
        steps.append(("training.micro_batch_size: 1 (accumulation keeps the global batch)", current))
    if not current.liger or not current.gradient_checkpointing:
        current = replace(current, liger=True, gradient_checkpointing=True)
        steps.append(("training.liger_kernel: true, gradient_checkpointing: true", current))
    if current.deepspeed != "z3_offload":
        current = replace(current, deepspeed="z3_offload")
        steps.append(("hardware.deepspeed: z3_offload (params + optimizer in CPU memory)", current))
    out = []
    for action, step in steps:  # each step as it stands: the micro batch drops only at its own step
        est = estimate(step)
        out.append(LadderStep(action, est, est.fits(gpu_bytes, margin)))
    return out


def choose_for_stage(
    recipe: Recipe,
    stage_index: int,
    arch: ModelArch,
    world_size: int,
    gpu_bytes: float,
    margin: float = SAFETY_MARGIN,
    **settings: Any,
) -> Choice:
    """`choose` with the stage's own micro batch and checkpointing (`auto`: the planner's), as render, `lfw plan`
    and lfw.plan use it. `settings` replaces PlanInput fields (e.g. liger=False where the kernel cannot run)."""
    training = recipe.stage_training(stage_index)
    inp = replace(plan_input(recipe, stage_index, arch, world_size, 1), **settings)
    micro = training.micro_batch_size if isinstance(training.micro_batch_size, int) else None
    gc = training.gradient_checkpointing
    checkpointing = None if gc == "auto" else gc
    return choose(inp, training.global_batch_size, gpu_bytes, margin, micro=micro, checkpointing=checkpointing)
