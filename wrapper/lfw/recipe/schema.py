"""The recipe schema: a short, strictly validated YAML that says what to train and how.

Every field has a docstring-style description (reused by `lfw recipes --fields` and error messages). Unknown keys
are errors that name their path and the closest valid key; all errors of a file are reported at once.
This module is pure: no click, no torch.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PositiveInt, create_model, model_validator
from pydantic.fields import FieldInfo

from lfw.recipe.vocabulary import FORMATS, STAGE_FORMATS, DatasetFormat, Method, StageKind, TagStyle

DeepSpeed = Literal["none", "z0", "z2", "z3", "z3_offload"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


def _packing(value: Any) -> Any:
    """`true` keeps its old meaning (LLaMA-Factory's `packing: true`); `off`/`none` mean false."""
    if value is True:
        return "plain"
    return False if value in ("off", "none") else value


Packing = Annotated[Literal["auto", "neat", "plain", False], BeforeValidator(_packing)]


# `packing: auto` per stage: no attention across samples for sft; LLaMA-Factory packs pt itself; it cannot pack
# the pairs of dpo/kto/rm.
AUTO_PACKING: dict[str, str] = {"sft": "neat", "pt": "plain"}


class Strict(BaseModel):
    """Base for every recipe block: unknown keys are errors, values are not coerced silently."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class ModelSpec(Strict):
    path: str = Field(description="Hub id (Qwen/Qwen3-4B) or local folder of the base model.")
    template: str = Field(
        description="LLaMA-Factory chat template, e.g. qwen3_nothink (data without reasoning), qwen3, chatml."
    )
    trust_remote_code: bool = Field(False, description="Run the model repo's own code; only when you trust it.")
    flash_attn: Literal["auto", "fa2", "sdpa", "disabled"] = Field(
        "auto", description="Attention kernel; auto falls back to sdpa when flash-attn is missing."
    )


class LoraSpec(Strict):
    rank: PositiveInt = Field(8, description="LoRA rank r.")
    alpha: PositiveInt | None = Field(None, description="LoRA alpha; default 2 x rank.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA branch.")
    target: str = Field("all", description="Modules to adapt: all, or a comma list like q_proj,v_proj.")


def _quantization_method(value: Any) -> Any:
    """`bitsandbytes` is the name people know; LLaMA-Factory's QuantizationMethod value is `bnb`."""
    return "bnb" if value == "bitsandbytes" else value


class QuantizationSpec(Strict):
    bits: Literal[4, 8] = Field(4, description="Weight bits of the frozen base (QLoRA).")
    method: Annotated[Literal["bnb", "hqq", "eetq"], BeforeValidator(_quantization_method)] = Field(
        "bnb",
        description="On-the-fly quantization backend, as LLaMA-Factory names it: bnb (bitsandbytes; "
        "`bitsandbytes` is accepted), hqq or eetq (8-bit only).",
    )

    @model_validator(mode="after")
    def _bits_fit_method(self) -> QuantizationSpec:
        if self.method == "eetq" and self.bits != 8:
            raise ValueError("eetq quantizes to 8 bits only; set bits: 8 or method: bnb")
        return self


class MethodSpec(Strict):
    type: Method = Field("lora", description="lora, qlora (quantized base + LoRA), full or freeze.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings (lora and qlora).")
    quantization: QuantizationSpec | None = Field(
        None, description="Quantization of the base; qlora defaults to 4-bit bitsandbytes."
    )
    freeze_trainable_layers: int = Field(2, description="freeze: how many last layers train (negative: first).")

    @model_validator(mode="after")
    def _qlora_defaults(self) -> MethodSpec:
        if self.type == "qlora" and self.quantization is None:
            self.quantization = QuantizationSpec()
        if self.quantization is not None and self.type not in ("qlora", "lora"):
            raise ValueError("quantization is for LoRA on a frozen base; use method.type: qlora")
        return self


class DatasetSpec(Strict):
    path: str | None = Field(
        None, description="Local data file or folder (JSON, JSONL, Parquet, CSV); relative to the recipe."
    )
    id: str | None = Field(
        None, description="Hub dataset instead of a local path, e.g. tatsu-lab/alpaca (LLaMA-Factory's hf_hub_url)."
    )
    hub: Literal["hf", "ms"] | None = Field(
        None, description="Hub of `id`: hf (Hugging Face, hf_hub_url; the default) or ms (ModelScope, ms_hub_url)."
    )
    subset: str | None = Field(None, description="Hub dataset: configuration (subset) name.")
    split: str | None = Field(None, description="Hub dataset: split to train on (LLaMA-Factory's default: train).")
    folder: str | None = Field(None, description="Hub dataset: folder of the repository that holds the data.")
    format: DatasetFormat = Field(description=f"{', '.join(FORMATS)}.")
    name: str | None = Field(None, description="Name in dataset_info.json; default from the file name.")
    tags: TagStyle | None = Field(
        None,
        description="sharegpt tag style: from/value with human/gpt, or role/content with user/assistant.",
    )
    columns: dict[str, str] | None = Field(None, description="Column renames on top of the format's defaults.")
    media_dir: str | None = Field(None, description="Folder that image/video/audio paths are relative to.")

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.path is None) == (self.id is None):
            raise ValueError(
                "a dataset needs exactly one of path (local file or folder) or id (hub dataset, e.g. tatsu-lab/alpaca)"
            )
        hub_only = [key for key in ("hub", "subset", "split", "folder") if getattr(self, key) is not None]
        if self.path is not None and hub_only:
            keys = ", ".join(hub_only)
            raise ValueError(f"{keys} belong to a hub dataset (id:); a local path takes the file or folder itself")
        return self


# Upper bounds far above any real run (Qwen3-14B at 32k tokens, global batch 4096), so a typo or an extra zero
# (cutoff_len 1e13, global batch 1e26) is an error at load, not a 200-million-GiB plan.
MAX_GLOBAL_BATCH = 1 << 20
MAX_MICRO_BATCH = 1 << 14
MAX_CUTOFF_LEN = 1 << 22


class TrainingSpec(Strict):
    global_batch_size: PositiveInt = Field(
        16,
        le=MAX_GLOBAL_BATCH,
        description="Samples per optimizer step over all GPUs and nodes; held constant as GPU count changes.",
    )
    micro_batch_size: Annotated[int, Field(gt=0, le=MAX_MICRO_BATCH)] | Literal["auto"] = Field(
        "auto",
        description="Samples (packed sequences with packing) per GPU per forward pass; auto: on GPUs the largest "
        "that `lfw plan` finds fits the smallest GPU (or LFW_GPU_MEM_GIB; 1 when the memory is unknown), 1 on CPU.",
    )
    cutoff_len: PositiveInt = Field(
        2048, le=MAX_CUTOFF_LEN, description="Maximum tokens per sample (longer ones are cut)."
    )
    epochs: float | None = Field(3.0, gt=0, description="Passes over the data (ignored when max_steps is set).")
    max_steps: PositiveInt | None = Field(None, description="Stop after this many optimizer steps.")
    max_samples: PositiveInt | None = Field(None, description="Use at most this many samples per dataset.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Peak learning rate.")
    lr_scheduler: Literal[
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "warmup_stable_decay",
    ] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float | None = Field(None, ge=0, lt=1, description="Warm-up as a fraction of all steps.")
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up in steps (instead of warmup_ratio).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    precision: Precision = Field(
        "auto",
        description="auto: bf16 where the GPU has it, else fp16; fp32 on CPU (bf16/fp16 there only if asked).",
    )
    gradient_checkpointing: bool | Literal["auto"] = Field(
        "auto",
        description="Recompute activations to save memory; auto: on GPUs only when the planner finds memory needs "
        "it (on when the GPU memory is unknown), off on CPU.",
    )
    packing: Packing = Field(
        "auto",
        description="Several samples per cutoff_len sequence: neat (no attention across samples; sft only), plain "
        "(LLaMA-Factory's packing: true), false; auto: neat for sft (false on CPU), plain for pt (LLaMA-Factory's "
        "own), false for dpo/kto/rm. An optimizer step then takes global_batch_size packed sequences.",
    )
    liger_kernel: bool | Literal["auto"] = Field(
        "auto",
        description="Fused liger kernels (most of the logits memory saved); auto: on GPUs, off on CPU (Triton "
        "kernels need a CUDA GPU).",
    )
    dataloader_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="Data-loader processes per GPU; auto: min(4, CPUs / GPUs per node) on GPUs, 0 on CPU.",
    )
    val_size: float = Field(0.0, ge=0, lt=1, description="Fraction of the data held out for evaluation.")
    logging_steps: PositiveInt = Field(10, description="Log loss every N steps.")
    save_steps: PositiveInt = Field(500, description="Save a checkpoint every N steps.")
    eval_steps: PositiveInt | None = Field(None, description="Evaluate every N steps (default save_steps).")
    seed: int = Field(42, description="Random seed.")
    preprocessing_workers: PositiveInt | Literal["auto"] | None = Field(
        "auto",
        description="Processes for tokenizing the data; auto: min(16, CPUs), one per 8 MiB of local data; "
        "null: LLaMA-Factory's one process.",
    )
    plot_loss: bool = Field(True, description="Save a loss curve PNG after training.")

    @model_validator(mode="after")
    def _one_warmup(self) -> TrainingSpec:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError("set warmup_ratio or warmup_steps, not both")
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set epochs or max_steps")
        return self


def _optional(field: FieldInfo) -> tuple[Any, None]:
    """A field as an optional override, keeping its before-validators (packing: true means plain there too)."""
    validators = [m for m in field.metadata if isinstance(m, BeforeValidator)]
    base: Any = field.annotation
    annotation = base | None
    return (Annotated[(annotation, *validators)] if validators else annotation), None


# Per-stage overrides: any training field, all optional, merged over the recipe's `training` block.
TrainingOverrides = create_model(
    "TrainingOverrides",
    __base__=Strict,
    **cast(dict[str, Any], {name: _optional(field) for name, field in TrainingSpec.model_fields.items()}),
)


class StageSpec(Strict):
    stage: StageKind = Field(description="sft, dpo, kto, pt or rm (orpo/simpo: dpo with pref_loss).")
    name: str | None = Field(None, description="Stage folder name; default <index>-<stage>.")
    datasets: list[DatasetSpec] = Field(min_length=1, description="Training data of this stage.")
    pref_loss: Literal["sigmoid", "hinge", "ipo", "kto_pair", "orpo", "simpo"] | None = Field(
        None, description="Preference loss for dpo (orpo and simpo need no reference model)."
    )
    pref_beta: float | None = Field(None, gt=0, description="Preference beta (dpo/kto/orpo/simpo).")
    training: TrainingOverrides | None = Field(None, description="Training fields that differ in this stage.")  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _formats_fit_stage(self) -> StageSpec:
        allowed = STAGE_FORMATS[self.stage]
        for ds in self.datasets:
            if ds.format not in allowed:
                raise ValueError(
                    f"stage {self.stage} cannot train on format {ds.format!r}; use one of {', '.join(allowed)}"
                )
        if self.pref_loss is not None and self.stage != "dpo":
            raise ValueError("pref_loss belongs to a dpo stage")
        return self


def _gpu_count(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise ValueError(f"gpus is auto or a whole number of at least 1 (got {value!r})")


class HardwareSpec(Strict):
    gpus: Annotated[Literal["auto"] | int, BeforeValidator(_gpu_count)] = Field(
        "auto",
        description="GPUs per node: auto (all visible) or N. With device: cpu, the number of processes.",
    )
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: cuda when GPUs are visible.")
    deepspeed: DeepSpeed = Field("none", description="none, z0, z2, z3 or z3_offload (optimizer + params to CPU).")


class SwanLabSpec(Strict):
    project: str = Field(description="SwanLab project.")
    experiment: str | None = Field(None, description="Experiment name; default the run directory's name.")
    workspace: str | None = Field(None, description="SwanLab workspace (team).")
    mode: Literal["cloud", "local"] = Field(
        "cloud",
        description="cloud needs SWANLAB_API_KEY in the environment; local keeps logs on disk "
        "(LLaMA-Factory 0.9.5's swanlab_mode takes these two).",
    )


class WandbSpec(Strict):
    project: str = Field(description="Weights & Biases project.")
    entity: str | None = Field(None, description="W&B entity (user or team).")
    mode: Literal["offline", "online"] = Field(
        "offline", description="offline writes RUN/wandb only (`wandb sync` later); online needs WANDB_API_KEY."
    )


class MLflowSpec(Strict):
    experiment: str = Field(description="MLflow experiment name.")
    tracking_uri: str | None = Field(
        None, description="MLflow tracking server or store; default SQLite in the run directory (RUN/mlflow.db)."
    )


class TrackingSpec(Strict):
    swanlab: SwanLabSpec | None = Field(
        None, description="Log to SwanLab (files in RUN/swanlog; the API key comes from the env)."
    )
    tensorboard: bool = Field(False, description="Write TensorBoard event files to RUN/<stage>/runs.")
    wandb: WandbSpec | None = Field(None, description="Log to Weights & Biases (offline by default).")
    mlflow: MLflowSpec | None = Field(None, description="Log to MLflow (a file store in the run by default).")


# ---- after training: export, eval, report (lfw.launch.pipeline turns these into steps of the run) ----------------


def _block_flag(value: Any) -> Any:
    """`export: true` / `report: true` mean the block with its defaults; false means no block."""
    if value is True:
        return {}
    return None if value is False else value


class ExportStep(Strict):
    stages: list[str] | None = Field(
        None,
        min_length=1,
        description="Training stages to merge into RUN/export/<stage> (folder name like 1-sft, stage type or "
        "1-based number); default: the last.",
    )
    verify: bool = Field(True, description="Load each export with transformers, check its chat template, generate.")


class BenchmarkSpec(Strict):
    path: str = Field(description="Benchmark file or folder (what `lfw eval --bench` takes); relative to the recipe.")
    kind: str | None = Field(
        None, description="Benchmark kind (mc, mc-text, gsm8k, gen, alpaca, sharegpt); default guessed."
    )
    name: str | None = Field(None, description="Benchmark label in the results; default the file name.")

    def spec(self) -> str:
        """As `lfw eval --bench` takes it: [LABEL=][KIND:]PATH."""
        return (f"{self.name}=" if self.name else "") + (f"{self.kind}:" if self.kind else "") + self.path


class EvalStep(Strict):
    benchmarks: list[BenchmarkSpec] = Field(min_length=1, description="Benchmarks every model is scored on.")
    models: list[str] | None = Field(
        None,
        min_length=1,
        description="base and/or exported stages, results in RUN/eval/<label>; default: base and every export.",
    )
    backend: Literal["vllm", "hf"] = Field("vllm", description="vllm (the vLLM environment) or hf (transformers).")
    limit: PositiveInt | None = Field(None, description="At most N questions per benchmark.")
    max_new_tokens: PositiveInt | None = Field(None, description="Generation budget (default per benchmark kind).")


class ReportStep(Strict):
    baseline: str | None = Field(None, description="Model the score differences are against; default the first.")


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="Run name (folder-safe).")
    description: str | None = Field(None, description="One line shown by `lfw recipes`.")
    model: ModelSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    stages: list[StageSpec] = Field(min_length=1, description="Stages run in order (e.g. sft then dpo).")
    hardware: HardwareSpec = Field(default_factory=HardwareSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    output_dir: str = Field("runs", description="Folder under which each run gets a new directory.")
    llamafactory: dict[str, Any] = Field(
        default_factory=dict,
        description="Raw LLaMA-Factory keys passed through as they are (checked against its argument classes).",
    )
    export: Annotated[ExportStep | None, BeforeValidator(_block_flag)] = Field(
        None, description="After training: merge stages into RUN/export/<stage> (lfw export); true: the last."
    )
    eval: EvalStep | None = Field(None, description="After export: score base and exports into RUN/eval (lfw eval).")
    report: Annotated[ReportStep | None, BeforeValidator(_block_flag)] = Field(
        None, description="Last: lfw report over the run and its evals into RUN/report; true: with defaults."
    )

    @model_validator(mode="after")
    def _quantization_fits_deepspeed(self) -> Recipe:
        """LLaMA-Factory 0.9.5 (model_utils/quantization.py) quantizes under ZeRO-3 only to 4 bits with bnb."""
        quant = self.method.quantization
        if quant is not None and self.hardware.deepspeed in ("z3", "z3_offload"):
            if quant.method != "bnb" or quant.bits != 4:
                raise ValueError(
                    f"{quant.bits}-bit {quant.method} cannot run under DeepSpeed ZeRO-3 in LLaMA-Factory; "
                    "use method.quantization {bits: 4, method: bnb} or hardware.deepspeed z2"
                )
        return self

    @model_validator(mode="after")
    def _steps_name_stages(self) -> Recipe:
        """export/eval/report name stages and models that exist, so a typo fails at load, not after training."""
        exported = [self.stage_dir_name(i) for i in self.export_indices()]
        for ref in self.eval.models or [] if self.eval is not None else []:
            if self.model_label(ref) not in ("base", *exported):
                raise ValueError(
                    f"eval.models: {ref!r} is not base or an exported stage ({', '.join(['base', *exported])}); "
                    "add the stage to export.stages"
                )
        labels = self.eval_labels()
        if self.report is not None and self.report.baseline not in (None, *labels):
            raise ValueError(
                f"report.baseline: {self.report.baseline!r} is not an evaluated model ({', '.join(labels)})"
            )
        return self

    def stage_index(self, ref: str) -> int | None:
        """A stage named by folder name (1-sft), stage type when only one stage has it, or 1-based number."""
        names = [self.stage_dir_name(i) for i in range(len(self.stages))]
        if ref in names:
            return names.index(ref)
        if ref.isdigit() and 1 <= int(ref) <= len(names):
            return int(ref) - 1
        by_type = [i for i, stage in enumerate(self.stages) if stage.stage == ref]
        return by_type[0] if len(by_type) == 1 else None

    def model_label(self, ref: str) -> str | None:
        """base, or the folder name of the stage `ref` names (None: no such stage)."""
        if ref == "base":
            return ref
        index = self.stage_index(ref)
        return None if index is None else self.stage_dir_name(index)

    def export_indices(self) -> list[int]:
        """The stages the export block merges, in training order (its default: the last)."""
        if self.export is None:
            return []
        if self.export.stages is None:
            return [len(self.stages) - 1]
        indices = []
        for ref in self.export.stages:
            index = self.stage_index(ref)
            if index is None:
                names = ", ".join(self.stage_dir_name(i) for i in range(len(self.stages)))
                raise ValueError(f"export.stages: no stage {ref!r} (stages: {names}, or a stage type or number)")
            indices.append(index)
        return sorted(set(indices))

    def eval_labels(self) -> list[str]:
        """The models the eval block scores: base and exported stages by folder name, base first."""
        if self.eval is None:
            return []
        exported = [self.stage_dir_name(i) for i in self.export_indices()]
        if self.eval.models is None:
            return ["base", *exported]
        wanted = {self.model_label(ref) for ref in self.eval.models}
        return [label for label in ["base", *exported] if label in wanted]

    def stage_training(self, index: int) -> TrainingSpec:
        """The training block of one stage: the recipe's, with the stage's overrides on top."""
        overrides = self.stages[index].training
        merged = self.training.model_dump()
        if overrides is not None:
            merged.update(overrides.model_dump(exclude_none=True))
        if merged["packing"] == "auto":  # what auto means depends on the stage: every reader sees the same
            merged["packing"] = AUTO_PACKING.get(self.stages[index].stage, False)
        return TrainingSpec.model_validate(merged)

    def stage_dir_name(self, index: int) -> str:
        stage = self.stages[index]
        return stage.name or f"{index + 1}-{stage.stage}"
