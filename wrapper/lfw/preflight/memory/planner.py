"""Memory planning: per-GPU peak memory of a training stage, broken down, and the largest micro batch.

Pure arithmetic over a `ModelArch` and the recipe's settings (no torch, no transformers): `lfw plan` answers
in milliseconds on a laptop. The model mirrors what LLaMA-Factory 0.9.5 does on a GPU:

- Trainable parameters are cast to fp32 (LoRA adapters, full and freeze tuning) unless DeepSpeed runs the
  model (then everything is bf16 with an fp32 master copy inside the optimizer); training runs under bf16
  autocast, so full tuning keeps a bf16 copy of each weight while its layer's activations are alive.
- AdamW (torch fused): two fp32 moments per trainable parameter; gradients fp32, freed after each step.
- Activations are counted per token and layer from the tensors autograd saves in a Qwen3/Llama block with
  SDPA attention (no sequence-squared term), with the liger kernel's fused RMSNorm/SwiGLU/RoPE when on.
  Gradient checkpointing keeps only each layer's input and recomputes one layer at a time.
- The loss: transformers upcasts the logits to fp32 and log_softmax keeps an fp32 copy; at the start of the
  backward pass about 12 bytes per token and vocabulary entry are alive. The liger kernel's fused linear
  cross-entropy never materialises them (SFT/PT only: LLaMA-Factory keeps logits for DPO/KTO/RM).
- DPO trains on chosen + rejected (twice the sequences) and runs a reference forward pass (a bf16 copy of
  the weights for full/freeze tuning; LoRA uses the base with adapters off).

The constants marked `calibrated` were fitted once against an H100 (docs/plan_vs_gpu.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lfw.preflight.memory.shapes import LINEAR_NAMES, ModelArch
from lfw.rendering.speed import LIGER_MODEL_TYPES
from lfw.rendering.stage_models import reference_kind, single_adapter_reason

if TYPE_CHECKING:
    from lfw.recipe.schema import Recipe

GIB = 1024**3
MIB = 1024**2

SAFETY_MARGIN = 0.10  # keep 10% of the card free: fragmentation spikes, NCCL buffers, eval batches
CUDA_CONTEXT_BYTES = 1400 * MIB  # measured: 0.75-1.35 GiB outside the allocator (context, cuBLAS, kernels)
ALLOCATOR_SLACK = 1.08  # calibrated: torch's caching allocator reserves this much more than it hands out

LOSS_BYTES_PER_LOGIT = 12  # fp32 logits copy + log_softmax output + its gradient at the backward's start
DPO_LOSS_BYTES_PER_LOGIT = 14  # policy log-probs kept (4) while the reference forward's 10 are alive
LIGER_LOSS_BYTES_PER_HIDDEN = 8  # fused linear CE: chunks of about tokens x hidden logits + grad_input
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit codes + double-quantized absmax per 64-block
INT8_BYTES = 1.0 + 4 / 4096  # 8-bit codes + one fp32 scale per row (rows of a few thousand)
ZERO3_LIVE_LAYERS = 2
LORA_CAST_BYTES = 1  # calibrated: input copies kept by fp32 adapters under autocast, per input feature
GC_LAYER_FACTOR = 1.0  # calibrated: layers alive at once in the checkpointed backward (recomputed)


@dataclass(frozen=True)
class PlanInput:
    """Everything the estimate depends on; built from a recipe stage by `plan_input`."""

    arch: ModelArch
    method: str = "lora"  # lora, qlora, full, freeze
    lora_rank: int = 8
    lora_target: str = "all"
    quant_bits: int | None = None  # 4 or 8 (qlora), None otherwise
    precision: str = "bf16"  # bf16, fp16, fp32
    deepspeed: str = "none"  # none, z0, z2, z3, z3_offload
    world_size: int = 1
    micro_batch: int = 1
    cutoff_len: int = 2048
    gradient_checkpointing: bool = True
    liger: bool = False
    packing: str = "off"  # off, plain or neat (neat: a 4D attention mask under SDPA)
    stage: str = "sft"
    pref_loss: str | None = None
    freeze_trainable_layers: int = 2
    chained: bool = False  # earlier stages trained first (decides the reference model; see lfw.rendering.stage_models)

    @property
    def reference(self) -> str:
        """none, policy (adapters off, no copy) or copy: what LLaMA-Factory builds, as render writes it."""
        single = single_adapter_reason(self.method, self.quant_bits, self.deepspeed) is not None
        return reference_kind(self.stage, self.pref_loss, self.method, self.chained, single)

    @property
    def sequences(self) -> int:
        """Sequences per forward pass: preference stages concatenate chosen and rejected."""
        return self.micro_batch * (2 if self.stage in ("dpo", "rm", "kto") else 1)

    @property
    def tokens(self) -> int:
        """Tokens per forward pass at the worst case: every sequence cutoff_len long (so with packing)."""
        return self.sequences * self.cutoff_len


@dataclass(frozen=True)
class Component:
    name: str
    bytes: float
    note: str = ""


@dataclass(frozen=True)
class Estimate:
    """Per-GPU peak: the parts alive at the peak moment, the allocator's slack, and the CUDA context."""

    inp: PlanInput
    components: list[Component]
    peak_phase: str
    trainable_params: int
    cpu_bytes: float = 0.0  # what ZeRO offload keeps in host memory

    @property
    def allocated(self) -> float:
        """Comparable with torch.cuda.max_memory_allocated."""
        return sum(c.bytes for c in self.components)

    @property
    def reserved(self) -> float:
        """Comparable with torch.cuda.max_memory_reserved."""
        return self.allocated * ALLOCATOR_SLACK

    @property
    def total(self) -> float:
        """What nvidia-smi shows for the process: reserved plus the CUDA context."""
        return self.reserved + CUDA_CONTEXT_BYTES

    def fits(self, gpu_bytes: float, margin: float = SAFETY_MARGIN) -> bool:
        return self.total <= gpu_bytes * (1 - margin)


def _lora_modules(target: str) -> tuple[str, ...]:
    if target.strip() == "all":
        return LINEAR_NAMES
    return tuple(name.strip() for name in target.split(",") if name.strip() in LINEAR_NAMES)


def lora_params(arch: ModelArch, rank: int, target: str = "all") -> int:
    """LoRA adds A (r x in) and B (out x r) to every targeted linear layer of every block."""
    shapes = arch.linear_shapes()
    return arch.layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in _lora_modules(target))


def weight_bytes(arch: ModelArch, bits: int | None, dtype_bytes: int = 2) -> float:
    """The base weights as stored: block linears quantized when asked; embeddings, head and norms in bf16."""
    linear = arch.layers * arch.layer_linear_params
    rest = arch.params - linear
    per_linear = {4: NF4_BYTES, 8: INT8_BYTES}.get(bits or 0, float(dtype_bytes))
    return linear * per_linear + rest * dtype_bytes


def layer_activation_bytes(arch: ModelArch, *, fp32_residual: bool, liger: bool, lora_casts: int) -> float:
    """Bytes autograd saves per token in one decoder block (SDPA attention; no T^2 term).

    Derived by walking a Qwen3 block, then checked on an H100 (docs/plan_vs_gpu.md): RMSNorm keeps its fp32
    input (and, when its weight trains, the normalised copy), q/k norms likewise, RoPE keeps nothing per token
    (cos/sin need no gradient), SDPA keeps q/k/v/output plus o_proj's contiguous copy, SwiGLU keeps gate, up,
    silu and the product. Full tuning under autocast carries an fp32 residual stream and a bf16 cast of it
    per consuming linear. fp32 LoRA adapters on bf16 linears keep a cast of their input (`lora_casts`; peft
    skips it for bitsandbytes layers). The liger kernel's fused RMSNorm/SwiGLU/in-place RoPE keep their inputs.
    """
    h, q, kv, i = arch.hidden, arch.q_dim, arch.kv_dim, arch.intermediate
    if liger:
        norms = (18 if fp32_residual else 8) * h
        attn = 6 * q + 6 * kv
        mlp = 6 * i
        no_qk_norm = 2 * q + 2 * kv
    else:
        norms = (26 if fp32_residual else 12) * h
        attn = (14 * q + 12 * kv) if fp32_residual else (10 * q + 8 * kv)
        mlp = 8 * i
        no_qk_norm = (8 if fp32_residual else 4) * (q + kv)
    if not arch.qk_norm:
        attn -= no_qk_norm
    lora = lora_casts * LORA_CAST_BYTES * (5 * h + q + i)
    return norms + attn + mlp + lora


@dataclass(frozen=True)
class _Setup:
    """What the parts of one estimate share: derived once from the PlanInput."""

    inp: PlanInput
    trainable: int

    @property
    def n(self) -> int:
        return max(self.inp.world_size, 1)

    @property
    def half(self) -> int:
        return 4 if self.inp.precision == "fp32" else 2

    @property
    def zero3(self) -> bool:
        return self.inp.deepspeed in ("z3", "z3_offload")

    @property
    def offload(self) -> bool:
        return self.inp.deepspeed == "z3_offload"

    @property
    def lora(self) -> bool:
        return self.inp.method in ("lora", "qlora")

    @property
    def bits(self) -> int | None:
        return self.inp.quant_bits if self.lora else None

    @property
    def fp32_trainable(self) -> bool:
        """Without DeepSpeed LLaMA-Factory casts trainable parameters to fp32 and trains under autocast;
        DeepSpeed keeps the module in bf16 and holds an fp32 master copy inside its optimizer."""
        return self.inp.deepspeed == "none" and self.inp.precision != "fp32"

    @property
    def fp32_residual(self) -> bool:
        return self.fp32_trainable and self.inp.method == "full"

    @property
    def res_bytes(self) -> int:
        return 4 if self.fp32_residual else self.half


def trainable_params(inp: PlanInput) -> int:
    """Parameters that get gradients: the LoRA adapters, the last freeze layers, or all of them."""
    arch = inp.arch
    if inp.method in ("lora", "qlora"):
        return lora_params(arch, inp.lora_rank, inp.lora_target)
    if inp.method == "freeze":
        layers = min(abs(inp.freeze_trainable_layers), arch.layers)
        return layers * (arch.layer_linear_params + arch.layer_other_params)
    return arch.params


def _frozen_weights(s: _Setup) -> tuple[list[Component], float]:
    """The frozen base as stored (quantized for QLoRA), partitioned or offloaded under ZeRO-3; (parts, CPU bytes)."""
    arch = s.inp.arch
    frozen = arch.params - (s.trainable if not s.lora else 0)
    base = weight_bytes(arch, s.bits, s.half) if s.lora else frozen * s.half
    if s.zero3:
        base_gpu = 0.0 if s.offload else base / s.n
        note = "offloaded to CPU" if s.offload else f"ZeRO-3: 1/{s.n} per GPU"
    else:
        base_gpu, note = base, ("4-bit NF4" if s.bits == 4 else "8-bit" if s.bits == 8 else f"{s.half}-byte")
    parts = [Component("weights (frozen)", base_gpu, note)] if s.lora or frozen else []
    return parts, base if s.offload else 0.0


def _trainable_state(s: _Setup) -> tuple[list[Component], float, float]:
    """Trainable weights and AdamW state, sharded by ZeRO; (parts, gradient bytes, CPU bytes)."""
    ds, trainable = s.inp.deepspeed, s.trainable
    p_bytes = grad_bytes = 4 if s.fp32_trainable else s.half
    opt_bytes = 8 if s.fp32_trainable else 12  # 2 moments (+ fp32 master under DeepSpeed)
    shard_params = s.n if s.zero3 else 1
    shard = s.n if ds in ("z2", "z3", "z3_offload") else 1
    name = "LoRA adapters" if s.lora else "trainable weights"
    if s.offload:
        weights = Component(name, 0.0, f"{trainable / 1e6:.1f}M params, offloaded")
        cpu = float(trainable * (p_bytes + grad_bytes + opt_bytes))
    else:
        weights = Component(name, trainable * p_bytes / shard_params, f"{trainable / 1e6:.1f}M params")
        cpu = 0.0
    grads = 0.0 if s.offload else trainable * grad_bytes / shard
    optim = 0.0 if s.offload else trainable * opt_bytes / shard
    note = (
        "offloaded to CPU"
        if s.offload
        else ("2 fp32 moments" if s.fp32_trainable else "fp32 master + 2 moments")
        + (f", 1/{shard} per GPU" if shard > 1 else "")
    )
    return [weights, Component("optimizer (AdamW)", optim, note)], grads, cpu


def _zero_buffers(s: _Setup) -> list[Component]:
    """ZeRO working buffers: gathered layers (ZeRO-3) and gradient buckets."""
    arch, ds = s.inp.arch, s.inp.deepspeed
    buffers = 0.0
    if s.zero3:
        buffers += ZERO3_LIVE_LAYERS * (arch.layer_linear_params * s.half) + arch.vocab * arch.hidden * s.half
        buffers += min(s.trainable, arch.hidden**2) * 4
    elif ds in ("z0", "z2"):
        buffers += min(s.trainable, 5e8) * s.half
    return [Component("ZeRO buffers", buffers, "gathered layers, gradient buckets")] if buffers else []


def _per_layer(s: _Setup) -> float:
    lora_casts = 1 if (s.inp.method == "lora" and s.fp32_trainable) else 0  # peft skips the cast on bnb layers
    return layer_activation_bytes(s.inp.arch, fp32_residual=s.fp32_residual, liger=s.inp.liger, lora_casts=lora_casts)


def _activations(s: _Setup) -> Component:
    inp, arch = s.inp, s.inp.arch
    t, per_layer = inp.tokens, _per_layer(s)
    act_layers = arch.layers
    if inp.method == "freeze":  # frozen layers before the trainable ones keep no graph
        act_layers = min(abs(inp.freeze_trainable_layers), arch.layers)
    if inp.gradient_checkpointing:
        acts = t * (act_layers * arch.hidden * s.res_bytes + GC_LAYER_FACTOR * per_layer)  # + one layer recomputed
        act_note = "checkpointed: layer inputs + one layer"
    else:
        acts = t * (act_layers * per_layer + per_layer)  # + backward working set of one layer
        act_note = "every layer kept"
    acts += t * arch.hidden * (s.res_bytes + 2) * 2  # embedding output, final norm, head input
    if inp.precision == "fp32":
        acts *= 2
    return Component("activations", acts, f"{inp.sequences} seq x {inp.cutoff_len} tokens, {act_note}")


def _mask(s: _Setup) -> list[Component]:
    """Neat packing under SDPA: LLaMA-Factory's collator builds a block-diagonal (sequences, 1, T, T) mask in the
    compute dtype (not calibrated on a GPU; small next to the activations)."""
    inp = s.inp
    if inp.packing != "neat":
        return []
    mask = inp.sequences * inp.cutoff_len**2 * s.half
    return [Component("attention mask", mask, f"neat packing: {inp.sequences} x {inp.cutoff_len}^2 4D mask")]


def _autocast_copies(s: _Setup) -> list[Component]:
    """Autocast keeps a bf16 copy of each fp32 weight whose layer's graph is alive."""
    inp, arch = s.inp, s.inp.arch
    if not s.fp32_trainable or s.lora:
        return []
    kept = s.trainable - (0 if inp.method == "freeze" else arch.embedding_params)
    if inp.gradient_checkpointing:
        kept = arch.layer_linear_params
    kept += arch.vocab * arch.hidden if (inp.method == "full" and arch.tied_embeddings) else 0
    return [Component("autocast bf16 weight copies", kept * 2, "freed with the graph")]


def _loss(s: _Setup) -> Component:
    inp, arch, t = s.inp, s.inp.arch, s.inp.tokens
    wants_logits = inp.stage in ("dpo", "kto", "rm")
    if inp.liger and not wants_logits:
        chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(t / math.ceil(arch.vocab / arch.hidden)))))
        loss = t * arch.hidden * LIGER_LOSS_BYTES_PER_HIDDEN + min(chunk, t) * arch.vocab * 4
        return Component("logits and loss", loss, "liger fused linear cross-entropy: logits never materialised")
    per = DPO_LOSS_BYTES_PER_LOGIT if inp.reference != "none" else LOSS_BYTES_PER_LOGIT
    note = f"{t} tokens x {arch.vocab} vocab x {per} B (fp32 logits, log-softmax, gradient)"
    if inp.liger:
        note += "; liger cannot fuse it: LLaMA-Factory needs logits for " + inp.stage
    return Component("logits and loss", t * arch.vocab * per, note)


def _reference(s: _Setup) -> tuple[list[Component], float]:
    """The DPO/KTO reference model; (parts, CPU bytes)."""
    inp, arch, bits = s.inp, s.inp.arch, s.bits
    if inp.reference == "policy":
        return [Component("reference model", 0.0, "the policy with its adapter disabled (no copy)")], 0.0
    if inp.reference != "copy":
        return [], 0.0
    if s.lora:  # the previous stage's model: the base (quantized like the policy) + its adapter, frozen
        ref = weight_bytes(arch, bits, s.half) + s.trainable * s.half
        ref_note = ("4-bit" if bits == 4 else "8-bit" if bits == 8 else "bf16") + " base + adapter, frozen"
    else:
        ref, ref_note = arch.params * s.half, "bf16 copy of the weights, frozen"
    if bits:  # LF's DPO trainer leaves a quantized reference out of DeepSpeed: whole on every GPU
        return [Component("reference model", ref, ref_note + ", whole on each GPU (not partitioned)")], 0.0
    if s.offload:
        return [Component("reference model", 0.0, ref_note + ", offloaded")], ref
    return [Component("reference model", ref / (s.n if s.zero3 else 1), ref_note)], 0.0


def _dequantization(s: _Setup) -> list[Component]:
    if s.bits not in (4, 8):
        return []
    largest = max(a * b for a, b in s.inp.arch.linear_shapes().values())
    return [Component("dequantization workspace", 2 * largest * s.half, "one layer's weights dequantized at a time")]


_GRAPH = ("activations", "logits and loss", "autocast bf16 weight copies", "attention mask")


def _at_peak(s: _Setup, comps: list[Component], grads: float) -> tuple[list[Component], str]:
    """Gradients: at the backward's start only a few exist; at its end all, with activations gone."""
    last_layer = s.inp.tokens * _per_layer(s)
    graph = sum(c.bytes for c in comps if c.name in _GRAPH)
    phase_fwd = sum(c.bytes for c in comps)
    phase_bwd = phase_fwd - graph + grads + last_layer  # graph freed, gradients complete
    if phase_bwd > phase_fwd:
        comps = [c for c in comps if c.name not in _GRAPH]
        comps.append(Component("gradients", grads, "all of them, at the end of the backward pass"))
        comps.append(Component("activations", last_layer, "the last layer's backward"))
        return comps, "end of the backward pass (all gradients, graph freed)"
    note = "LoRA: all of them (small)" if s.lora else "not yet allocated"
    comps.append(Component("gradients", grads if s.lora else 0.0, note))
    return comps, "start of the backward pass (graph and logits alive)"


def estimate(inp: PlanInput) -> Estimate:
    """Per-GPU peak memory of one training step of `inp`, as the parts alive at the peak."""
    s = _Setup(inp, trainable_params(inp))
    frozen, cpu_frozen = _frozen_weights(s)
    state, grads, cpu_state = _trainable_state(s)
    reference, cpu_reference = _reference(s)
    comps = [*frozen, *state, *_zero_buffers(s), _activations(s), *_mask(s), *_autocast_copies(s), _loss(s)]
    comps += [*reference, *_dequantization(s)]
    comps, phase = _at_peak(s, comps, grads)
    return Estimate(inp, comps, phase, s.trainable, cpu_frozen + cpu_state + cpu_reference)


# ---- from a recipe --------------------------------------------------------------------------------------


def plan_input(
    recipe: Recipe, stage_index: int, arch: ModelArch, world_size: int, micro_batch: int | None = None
) -> PlanInput:
    """PlanInput of one stage of a validated recipe, on a GPU. `auto` settings as the estimate assumes them:
    checkpointing on (`choose` decides), the liger kernel where LLaMA-Factory has one for the model type."""
    training = recipe.stage_training(stage_index)
    method = recipe.method
    stage = recipe.stages[stage_index]
    precision = training.precision if training.precision != "auto" else "bf16"
    micro = micro_batch if micro_batch is not None else training.micro_batch_size
    liger = training.liger_kernel if training.liger_kernel != "auto" else arch.model_type in LIGER_MODEL_TYPES
    return PlanInput(
        arch=arch,
        method=method.type,
        lora_rank=method.lora.rank,
        lora_target=method.lora.target,
        quant_bits=method.quantization.bits if method.quantization else None,
        precision=precision,
        deepspeed=recipe.hardware.deepspeed,
        world_size=world_size,
        micro_batch=micro if isinstance(micro, int) else 1,
        cutoff_len=training.cutoff_len,
        gradient_checkpointing=training.gradient_checkpointing is not False,
        liger=liger,
        packing=training.packing or "off",
        stage=stage.stage,
        pref_loss=stage.pref_loss,
        freeze_trainable_layers=method.freeze_trainable_layers,
        chained=stage_index > 0,
    )


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"
