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
from dataclasses import dataclass, field, replace

from lfw.preflight.memory.shapes import LINEAR_NAMES, ModelArch
from lfw.rendering.stage_models import reference_kind, single_adapter_reason

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
    packing: bool = False
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


def estimate(inp: PlanInput) -> Estimate:
    """Per-GPU peak memory of one training step of `inp`, as the parts alive at the peak."""
    arch = inp.arch
    ds = inp.deepspeed
    n = max(inp.world_size, 1)
    half = 4 if inp.precision == "fp32" else 2
    zero3 = ds in ("z3", "z3_offload")
    offload = ds == "z3_offload"
    lora = inp.method in ("lora", "qlora")
    bits = inp.quant_bits if lora else None

    if lora:
        trainable = lora_params(arch, inp.lora_rank, inp.lora_target)
    elif inp.method == "freeze":
        layers = min(abs(inp.freeze_trainable_layers), arch.layers)
        trainable = layers * (arch.layer_linear_params + arch.layer_other_params)
    else:
        trainable = arch.params

    # Without DeepSpeed LLaMA-Factory casts trainable parameters to fp32 and trains under autocast;
    # DeepSpeed keeps the module in bf16 and holds an fp32 master copy inside its optimizer.
    fp32_trainable = ds == "none" and inp.precision != "fp32"
    comps: list[Component] = []
    cpu = 0.0

    frozen = arch.params - (trainable if not lora else 0)
    base = weight_bytes(arch, bits, half) if lora else frozen * half
    if zero3:
        base_gpu = 0.0 if offload else base / n
        cpu += base if offload else 0.0
        note = "offloaded to CPU" if offload else f"ZeRO-3: 1/{n} per GPU"
    else:
        base_gpu, note = base, ("4-bit NF4" if bits == 4 else "8-bit" if bits == 8 else f"{half}-byte")
    if lora or frozen:
        comps.append(Component("weights (frozen)", base_gpu, note))

    # Trainable parameters, their gradients and AdamW state.
    p_bytes = 4 if fp32_trainable else half
    grad_bytes = 4 if fp32_trainable else half
    opt_bytes = 8 if fp32_trainable else 12  # 2 moments (+ fp32 master under DeepSpeed)
    shard_params = n if zero3 else 1
    shard_grads = n if ds in ("z2", "z3", "z3_offload") else 1
    shard_opt = n if ds in ("z2", "z3", "z3_offload") else 1
    name = "LoRA adapters" if lora else "trainable weights"
    if offload:
        cpu += trainable * (p_bytes + grad_bytes + opt_bytes)
        comps.append(Component(name, 0.0, f"{trainable / 1e6:.1f}M params, offloaded"))
    else:
        comps.append(Component(name, trainable * p_bytes / shard_params, f"{trainable / 1e6:.1f}M params"))
    grads = 0.0 if offload else trainable * grad_bytes / shard_grads
    optim = 0.0 if offload else trainable * opt_bytes / shard_opt
    comps.append(
        Component(
            "optimizer (AdamW)",
            optim,
            "offloaded to CPU"
            if offload
            else ("2 fp32 moments" if fp32_trainable else "fp32 master + 2 moments")
            + (f", 1/{shard_opt} per GPU" if shard_opt > 1 else ""),
        )
    )

    # ZeRO working buffers: gathered layers (ZeRO-3) and gradient buckets.
    buffers = 0.0
    if zero3:
        buffers += ZERO3_LIVE_LAYERS * (arch.layer_linear_params * half) + arch.vocab * arch.hidden * half
        buffers += min(trainable, arch.hidden**2) * 4
    elif ds in ("z0", "z2"):
        buffers += min(trainable, 5e8) * half
    if buffers:
        comps.append(Component("ZeRO buffers", buffers, "gathered layers, gradient buckets"))

    # Activations.
    t = inp.tokens
    fp32_residual = fp32_trainable and not lora and inp.method == "full"
    lora_casts = 1 if (inp.method == "lora" and fp32_trainable) else 0  # peft skips the cast on bnb layers
    per_layer = layer_activation_bytes(arch, fp32_residual=fp32_residual, liger=inp.liger, lora_casts=lora_casts)
    act_layers = arch.layers
    if inp.method == "freeze":  # frozen layers before the trainable ones keep no graph
        act_layers = min(abs(inp.freeze_trainable_layers), arch.layers)
    res_bytes = 4 if fp32_residual else half
    if inp.gradient_checkpointing:
        acts = t * (act_layers * arch.hidden * res_bytes + GC_LAYER_FACTOR * per_layer)  # inputs + one layer recomputed
        act_note = "checkpointed: layer inputs + one layer"
    else:
        acts = t * (act_layers * per_layer + per_layer)  # + backward working set of one layer
        act_note = "every layer kept"
    acts += t * arch.hidden * (res_bytes + 2) * 2  # embedding output, final norm, head input
    if inp.precision == "fp32":
        acts *= 2
    comps.append(Component("activations", acts, f"{inp.sequences} seq x {inp.cutoff_len} tokens, {act_note}"))

    # Autocast keeps a bf16 copy of each fp32 weight whose layer's graph is alive.
    if fp32_trainable and not lora:
        kept = trainable - (0 if inp.method == "freeze" else arch.embedding_params)
        if inp.gradient_checkpointing:
            kept = arch.layer_linear_params
        kept += arch.vocab * arch.hidden if (inp.method == "full" and arch.tied_embeddings) else 0
        comps.append(Component("autocast bf16 weight copies", kept * 2, "freed with the graph"))

    # The loss.
    wants_logits = inp.stage in ("dpo", "kto", "rm")
    has_reference = inp.reference != "none"
    if inp.liger and not wants_logits:
        chunk = 2 ** math.ceil(math.log2(max(1, math.ceil(t / math.ceil(arch.vocab / arch.hidden)))))
        loss = t * arch.hidden * LIGER_LOSS_BYTES_PER_HIDDEN + min(chunk, t) * arch.vocab * 4
        loss_note = "liger fused linear cross-entropy: logits never materialised"
    else:
        per = DPO_LOSS_BYTES_PER_LOGIT if has_reference else LOSS_BYTES_PER_LOGIT
        loss = t * arch.vocab * per
        loss_note = f"{t} tokens x {arch.vocab} vocab x {per} B (fp32 logits, log-softmax, gradient)"
        if inp.liger:
            loss_note += "; liger cannot fuse it: LLaMA-Factory needs logits for " + inp.stage
    comps.append(Component("logits and loss", loss, loss_note))

    if inp.reference == "copy":
        if lora:  # the previous stage's model: the base (quantized like the policy) + its adapter, frozen
            ref = weight_bytes(arch, bits, half) + trainable * half
            ref_note = ("4-bit" if bits == 4 else "8-bit" if bits == 8 else "bf16") + " base + adapter, frozen"
        else:
            ref, ref_note = arch.params * half, "bf16 copy of the weights, frozen"
        if bits:  # LF's DPO trainer leaves a quantized reference out of DeepSpeed: whole on every GPU
            comps.append(Component("reference model", ref, ref_note + ", whole on each GPU (not partitioned)"))
        elif offload:
            cpu += ref
            comps.append(Component("reference model", 0.0, ref_note + ", offloaded"))
        else:
            comps.append(Component("reference model", ref / (n if zero3 else 1), ref_note))
    elif inp.reference == "policy":
        comps.append(Component("reference model", 0.0, "the policy with its adapter disabled (no copy)"))

    if bits == 4 or bits == 8:
        shapes = arch.linear_shapes().values()
        comps.append(
            Component(
                "dequantization workspace",
                2 * max(a * b for a, b in shapes) * half,
                "one layer's weights dequantized at a time",
            )
        )

    # Gradients: at the backward's start only a few exist; at its end all, with activations gone.
    phase_fwd = sum(c.bytes for c in comps)
    phase_bwd = phase_fwd - acts - loss + grads + t * per_layer  # graph freed, gradients complete
    phase_bwd -= next((c.bytes for c in comps if c.name == "autocast bf16 weight copies"), 0.0)
    if phase_bwd > phase_fwd:
        comps = [c for c in comps if c.name not in ("activations", "logits and loss", "autocast bf16 weight copies")]
        comps.append(Component("gradients", grads, "all of them, at the end of the backward pass"))
        comps.append(Component("activations", t * per_layer, "the last layer's backward"))
        phase = "end of the backward pass (all gradients, graph freed)"
    else:
        comps.append(
            Component(
                "gradients",
                grads if lora else 0.0,
                "LoRA: all of them (small)" if lora else "not yet allocated",
            )
        )
        phase = "start of the backward pass (graph and logits alive)"
    return Estimate(inp, comps, phase, trainable, cpu)


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


# ---- from a recipe --------------------------------------------------------------------------------------


def plan_input(
    recipe: object, stage_index: int, arch: ModelArch, world_size: int, micro_batch: int | None = None
) -> PlanInput:
    """PlanInput of one stage of a validated `lfw.recipe.schema.Recipe` (typed loosely: this module stays pure)."""
    training = recipe.stage_training(stage_index)  # type: ignore[attr-defined]
    method = recipe.method  # type: ignore[attr-defined]
    stage = recipe.stages[stage_index]  # type: ignore[attr-defined]
    precision = training.precision if training.precision != "auto" else "bf16"
    micro = micro_batch if micro_batch is not None else training.micro_batch_size
    return PlanInput(
        arch=arch,
        method=method.type,
        lora_rank=method.lora.rank,
        lora_target=method.lora.target,
        quant_bits=method.quantization.bits if method.quantization else None,
        precision=precision,
        deepspeed=recipe.hardware.deepspeed,  # type: ignore[attr-defined]
        world_size=world_size,
        micro_batch=micro if isinstance(micro, int) else 1,
        cutoff_len=training.cutoff_len,
        gradient_checkpointing=training.gradient_checkpointing,
        liger=training.liger_kernel,
        packing=training.packing,
        stage=stage.stage,
        pref_loss=stage.pref_loss,
        freeze_trainable_layers=method.freeze_trainable_layers,
        chained=stage_index > 0,
    )


def auto_micro_batch(recipe: object, stage_index: int, arch: ModelArch, world_size: int, gpu_bytes: float) -> int:
    """The micro batch `micro_batch_size: auto` resolves to: the planner's pick, or 1 when nothing fits."""
    training = recipe.stage_training(stage_index)  # type: ignore[attr-defined]
    choice = choose_micro_batch(
        plan_input(recipe, stage_index, arch, world_size, 1), training.global_batch_size, gpu_bytes
    )
    return choice.micro_batch or 1


def gib(value: float) -> str:
    return f"{value / GIB:.2f}"
