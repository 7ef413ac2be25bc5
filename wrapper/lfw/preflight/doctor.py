"""`lfw doctor`: the environment and a recipe checked for the failures the seeds' users hit after launch.

Every check is cheap and imports nothing heavy: versions come from package metadata, the GPUs from
`lfw.infra.hardware` (nvidia-smi under CUDA_VISIBLE_DEVICES, as `lfw run` sees them), the vLLM interpreter from
`lfw.infra.vllm_env` (the one `lfw serve` and `lfw eval` would start). Each check says ok / warn / fail and,
when not ok, the fix. Any fail makes `lfw doctor` exit 1.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import math
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfw.infra.hardware import GPU, driver_version, visible_gpus

OK, WARN, FAIL = "ok", "warn", "fail"

# name shown -> distribution name; the first two are needed to train at all.
PACKAGES = {
    "LLaMA-Factory": "llamafactory",
    "transformers": "transformers",
    "peft": "peft",
    "trl": "trl",
    "deepspeed": "deepspeed",
    "bitsandbytes": "bitsandbytes",
    "flash-attn": "flash-attn",
    "liger-kernel": "liger-kernel",
}
REQUIRED = ("llamafactory", "transformers", "peft", "trl")

# LLaMA-Factory 0.9.5 template name -> the model families LF registers it for (extras/constants.py), matched
# by equality: a template of one family on a model of another silently trains the wrong format. Templates not
# listed (chatml, default, alpaca, vicuna, ...) are not tied to one family and are not checked.
TEMPLATE_FAMILIES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(
        (
            "qwen", "qwen3", "qwen3_nothink", "qwen3_5", "qwen3_5_nothink", "qwen3_6", "qwen2_vl", "qwen3_vl",
            "qwen3_vl_nothink", "qwen2_audio", "qwen2_omni", "qwen3_omni", "qwen3_omni_nothink",
        ),
        ("qwen",),
    ),
    **dict.fromkeys(("llama2", "llama2_zh", "llama3", "llama4", "mllama"), ("llama",)),
    **dict.fromkeys(("mistral", "ministral", "ministral3", "mistral_small", "zephyr"), ("mistral",)),
    **dict.fromkeys(("gemma", "gemma2", "gemma3", "gemma3n", "gemma4", "gemma4n"), ("gemma",)),
    "paligemma": ("paligemma",),
    **dict.fromkeys(("phi", "phi_small", "phi4", "phi4_mini"), ("phi",)),
    # DeepSeek-LLM and DeepSeek-Coder (v1) are Llama architectures; the R1 distills are Qwen2 and Llama.
    **dict.fromkeys(("deepseek", "deepseekcoder"), ("deepseek", "llama")),
    "deepseek3": ("deepseek",),
    "deepseekr1": ("deepseek", "qwen", "llama"),
    **dict.fromkeys(
        ("chatglm3", "glm4", "glm4_moe", "glm4v", "glm4_5v", "glm4_7", "glmz1", "glm_ocr"), ("glm",)
    ),
    **dict.fromkeys(("intern2", "intern_vl", "intern_s1"), ("intern",)),
    **dict.fromkeys(("yi", "yi_vl"), ("yi", "llama")),  # Yi models are Llama architectures
    **dict.fromkeys(("falcon", "falcon_h1"), ("falcon",)),
}  # fmt: skip
# Names that are one family under another spelling (config model_type or hub name, letters before any digit).
_FAMILY_ALIASES = {
    "mixtral": "mistral",
    "ministral": "mistral",
    "chatglm": "glm",
    "phimoe": "phi",
    "internlm": "intern",
    "internvl": "intern",
    "interns": "intern",
}
_KNOWN_FAMILIES = {family for families in TEMPLATE_FAMILIES.values() for family in families}


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


VersionOf = Callable[[str], "str | None"]


def installed_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def model_family(model_type: str | None, name: str) -> str | None:
    """The family of a model: from config.json's model_type (qwen2_moe -> qwen), else the first word of its name
    that is one (meta-llama/Meta-Llama-3-8B -> llama). Whole words only: "dolphin" is not "phi"."""
    words = [model_type] if model_type else re.split(r"[^a-z0-9.]+", Path(name).name.lower())
    for word in words:
        letters = re.match(r"[a-z]+", word.lower())
        family = _FAMILY_ALIASES.get(letters.group(), letters.group()) if letters else None
        if family in _KNOWN_FAMILIES:
            return family
    return None


# ---- environment ----------------------------------------------------------------------------------------


def check_versions(version_of: VersionOf = installed_version) -> list[Check]:
    checks = []
    for shown, dist in PACKAGES.items():
        version = version_of(dist)
        if version:
            checks.append(Check(shown, OK, version))
        elif dist in REQUIRED:
            checks.append(Check(shown, FAIL, "not installed", f"pip install {dist} (lfw targets llamafactory==0.9.5)"))
        else:
            use = {
                "deepspeed": "needed for hardware.deepspeed",
                "bitsandbytes": "needed for QLoRA",
                "flash-attn": "optional; sdpa is used instead",
                "liger-kernel": "needed for training.liger_kernel",
            }[dist]
            checks.append(Check(shown, WARN, f"not installed ({use})", f"pip install {dist} where needed"))
    return checks


def check_vllm(env: Mapping[str, str]) -> Check:
    """The interpreter `lfw serve` and `lfw eval` would start, found the same way (lfw.infra.vllm_env)."""
    from lfw.infra.errors import UserError
    from lfw.infra.vllm_env import NoVllmError, vllm_python, vllm_version

    try:
        python = vllm_python(env=env)
    except UserError as err:
        # None set up is a warning (training does not need vLLM); a named or found interpreter without it is broken.
        problem = err.problems[0]
        status = WARN if isinstance(err, NoVllmError) else FAIL
        return Check("vLLM environment", status, f"{problem.message} (lfw serve / eval need it)", problem.fix)
    return Check("vLLM environment", OK, f"{vllm_version(python) or 'vllm'} ({python})")


def check_gpus(driver: str | None, gpus: list[GPU], env: Mapping[str, str]) -> list[Check]:
    """The GPUs a run would use (CUDA_VISIBLE_DEVICES applied), and whether they can do bf16."""
    mask = env.get("CUDA_VISIBLE_DEVICES")
    masked = f" (CUDA_VISIBLE_DEVICES={mask!r})" if mask is not None else ""
    if not gpus:
        return [
            Check(
                "CUDA driver",
                WARN,
                f"no GPU visible{masked}: CPU only" if driver else "no nvidia-smi or no GPU: CPU only",
                "fine for CPU runs; on a GPU machine install the NVIDIA driver"
                + (" or fix CUDA_VISIBLE_DEVICES" if mask is not None else ""),
            )
        ]
    names = ", ".join(sorted({gpu.name for gpu in gpus}))
    checks = [Check("CUDA driver", OK, f"driver {driver or '?'}, {len(gpus)} GPU(s) visible{masked}: {names}")]
    no_bf16 = sorted({gpu.name for gpu in gpus if not gpu.bf16})
    if no_bf16:
        checks.append(
            Check(
                "bf16",
                WARN,
                f"not supported by {', '.join(no_bf16)}",
                "precision: auto or fp16 (lfw's auto picks fp16 there)",
            )
        )
    else:
        checks.append(Check("bf16", OK, "supported (compute capability >= 8.0)"))
    return checks


def _writable(directory: Path) -> str | None:
    """None when a lock file can be created in `directory` (creating it if needed), else the error."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".lfw_doctor.lock"
        probe.touch()
        probe.unlink()
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def check_caches(env: Mapping[str, str]) -> list[Check]:
    """HF_HOME (and its hub/ and datasets/ folders) must take lock files: seed 000's evals died on that."""
    home = Path(env.get("HF_HOME") or Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "huggingface")
    dirs = {
        "HF_HOME": home,
        "hub cache": Path(env.get("HF_HUB_CACHE") or home / "hub"),
        "datasets cache": Path(env.get("HF_DATASETS_CACHE") or home / "datasets"),
    }
    checks = []
    for name, path in dirs.items():
        error = _writable(path)
        if error:
            checks.append(
                Check(
                    f"{name} writable",
                    FAIL,
                    f"{path}: {error} (lock files cannot be created)",
                    f"export HF_HOME to a folder you own, or fix ownership: chown -R $USER {path}",
                )
            )
        else:
            checks.append(Check(f"{name} writable", OK, str(path)))
    return checks


def check_disk(path: Path, need_bytes: float) -> Check:
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    detail = f"{free / 2**30:.0f} GiB free at {existing}; checkpoints need about {need_bytes / 2**30:.0f} GiB"
    if free < need_bytes:
        return Check("disk for checkpoints", FAIL, detail, "free space or set output_dir on a larger disk")
    if free < 2 * need_bytes:
        return Check("disk for checkpoints", WARN, detail, "keep save_total_limit low or free space")
    return Check("disk for checkpoints", OK, detail)


# ---- recipe ---------------------------------------------------------------------------------------------


def _first_rows_text(path: Path, rows: int = 50) -> str | None:
    """Text of the first rows of a JSON/JSONL file (None for other containers or unreadable files)."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                return "".join(line for _, line in zip(range(rows), handle, strict=False))
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            return json.dumps(data[:rows] if isinstance(data, list) else data, ensure_ascii=False)
    except (OSError, ValueError):
        return None
    return None


def _template_registry_checks(loaded: object) -> list[Check]:
    """The template exists in the installed LLaMA-Factory and its plugin reads the data's images/videos/audio."""
    from lfw.infra.errors import UserError
    from lfw.rendering.render import template_problems

    try:
        problems = template_problems(loaded)  # type: ignore[arg-type]
    except UserError as err:  # e.g. two datasets claiming one name: render reports it
        problems = err.problems
    if not problems:
        name = loaded.recipe.model.template  # type: ignore[attr-defined]
        return [Check("template in LLaMA-Factory", OK, f"{name}: registered, and reads the data's media")]
    return [Check("template in LLaMA-Factory", FAIL, f"{p.where}: {p.message}", p.fix) for p in problems]


def check_recipe(
    loaded: object,
    version_of: VersionOf = installed_version,
    gpus: list[GPU] | None = None,
    gpu_count: int | None = None,
) -> list[Check]:
    """The known bad combinations of a loaded recipe (`lfw.recipe.loader.LoadedRecipe`), with their fixes."""
    from lfw.rendering.render import resolve_path

    recipe = loaded.recipe  # type: ignore[attr-defined]
    base_dir = loaded.base_dir  # type: ignore[attr-defined]
    checks: list[Check] = []
    gpus = gpus or []
    hw = recipe.hardware
    world = gpu_count or (hw.gpus if hw.gpus != "auto" else max(len(gpus), 1))
    if hw.device == "cpu":
        world = 0
    lora = recipe.method.type in ("lora", "qlora")
    trainings = [recipe.stage_training(i) for i in range(len(recipe.stages))]
    any_gc = any(t.gradient_checkpointing for t in trainings)
    ds = hw.deepspeed

    # The loader refuses llamafactory.ddp_find_unused_parameters (lfw renders it) and 8-bit or non-bnb
    # quantization under ZeRO-3, so doctor only says that these are handled.
    if world > 1 and lora and any_gc and ds == "none":
        checks.append(
            Check("DDP + LoRA + gradient checkpointing", OK, "handled: lfw renders ddp_find_unused_parameters: false")
        )
    if ds != "none" and world == 1:
        checks.append(Check("DeepSpeed on one GPU", OK, "handled: lfw launches with FORCE_TORCHRUN=1 (torchrun)"))
    if ds != "none" and not version_of("deepspeed"):
        checks.append(
            Check(
                "DeepSpeed installed",
                FAIL,
                f"hardware.deepspeed: {ds} but deepspeed is missing",
                "pip install deepspeed (LLaMA-Factory 0.9.5 caps it at 0.16.9)",
            )
        )
    quant = recipe.method.quantization
    if quant is not None and ds in ("z3", "z3_offload"):
        checks.append(
            Check(
                "QLoRA + ZeRO-3",
                OK,
                "4-bit: LLaMA-Factory stores the quantized weights as bf16 "
                "(bnb_4bit_quant_storage) so ZeRO-3 can partition them",
            )
        )
    if quant is not None and not version_of("bitsandbytes"):
        checks.append(Check("bitsandbytes", FAIL, "QLoRA needs bitsandbytes", "pip install bitsandbytes"))

    config, _ = model_config(recipe, base_dir)
    quant_method = ((config or {}).get("quantization_config") or {}).get("quant_method")
    if quant_method in ("gptq", "awq") and ds in ("z3", "z3_offload"):
        checks.append(
            Check(
                "pre-quantized model + ZeRO-3",
                FAIL,
                f"{recipe.model.path} is {quant_method}-quantized: ZeRO-3/FSDP cannot shard it",
                "use hardware.deepspeed: z2 (or none), or start from the unquantized model",
            )
        )

    template = recipe.model.template
    if template == "qwen3":
        thinking, looked = False, 0
        for stage in recipe.stages:
            for ds_spec in stage.datasets:
                if ds_spec.path is None:
                    continue  # hub data: not read here
                text = _first_rows_text(resolve_path(ds_spec.path, base_dir))
                if text is not None:
                    looked += 1
                    thinking = thinking or "<think>" in text
        if looked and not thinking:
            checks.append(
                Check(
                    "template qwen3 on data without reasoning",
                    WARN,
                    "no <think> in the first rows: qwen3 adds an empty think block to every label",
                    "model.template: qwen3_nothink",
                )
            )
    checks += _template_checks(template, (config or {}).get("model_type"), recipe.model.path)
    checks += _template_registry_checks(loaded)

    if recipe.model.flash_attn == "fa2" and not version_of("flash-attn"):
        checks.append(
            Check(
                "flash attention",
                FAIL,
                "model.flash_attn: fa2 but flash-attn is not installed",
                "model.flash_attn: auto or sdpa (PyTorch SDPA, no install needed)",
            )
        )
    elif recipe.model.flash_attn == "auto" and not version_of("flash-attn"):
        checks.append(Check("flash attention", OK, "flash-attn missing: auto uses sdpa"))
    if any(t.liger_kernel for t in trainings) and not version_of("liger-kernel"):
        checks.append(
            Check(
                "liger kernel",
                FAIL,
                "training.liger_kernel: true but liger-kernel is missing",
                "pip install liger-kernel, or liger_kernel: false",
            )
        )
    no_bf16 = [gpu.name for gpu in gpus if not gpu.bf16]
    if no_bf16 and any(t.precision == "bf16" for t in trainings):
        checks.append(
            Check(
                "bf16 on this GPU",
                FAIL,
                f"precision: bf16 but {no_bf16[0]} has no bf16",
                "training.precision: fp16 (or auto)",
            )
        )
    checks += check_context_length(recipe, base_dir)
    checks += _memory_checks(recipe, base_dir, gpus, max(world, 1))
    return checks


def _template_checks(template: str, model_type: Any, model_name: str) -> list[Check]:
    """The template's families (by LF template name) must include the model's family."""
    family = model_family(str(model_type) if model_type else None, model_name)
    allowed = TEMPLATE_FAMILIES.get(template)
    if family is None or allowed is None:
        return []
    if family in allowed:
        return [Check("template matches the model", OK, f"{template} on a {family} model")]
    templates = sorted(name for name, families in TEMPLATE_FAMILIES.items() if family in families)
    return [
        Check(
            "template matches the model",
            FAIL,
            f"template {template} is for {'/'.join(allowed)} models; this is a {family} model",
            f"model.template: one of {', '.join(templates)} (or a generic one such as chatml)",
        )
    ]


def _positions(config: dict[str, Any]) -> tuple[int, int, str] | None:
    """(positions before any rope scaling, positions the model handles as configured, how) from config.json."""
    text = config.get("text_config") or config
    trained = text.get("max_position_embeddings")
    if not isinstance(trained, int) or isinstance(trained, bool) or trained <= 0:
        return None
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    factor = rope.get("factor") if isinstance(rope, dict) else None
    kind = rope.get("rope_type") or rope.get("type") if isinstance(rope, dict) else None
    if not isinstance(factor, (int, float)) or factor <= 1 or kind in (None, "default"):
        return trained, trained, f"{trained} positions (no rope scaling in config.json)"
    original = rope.get("original_max_position_embeddings")
    base = original if isinstance(original, int) and original > 0 else trained
    limit = max(trained, int(base * factor))
    return base, limit, f"{limit} positions ({kind} rope scaling x{factor:g} of {base} in config.json)"


def model_config(recipe: Any, base_dir: Path) -> tuple[dict[str, Any] | None, Path]:
    """The model's config.json (None for a hub id or a folder without one) and where it would be."""
    from lfw.preflight.memory.shapes import read_config
    from lfw.rendering.render import model_location

    model_dir = Path(model_location(recipe.model.path, base_dir))
    return (read_config(model_dir) if model_dir.is_absolute() else None), model_dir / "config.json"


def check_context_length(recipe: Any, base_dir: Path) -> list[Check]:
    """cutoff_len against the model's positions: past them a RoPE model runs on positions it never saw (and
    LLaMA-Factory stretches RoPE only when asked: llamafactory.rope_scaling). With packing every sequence is
    cutoff_len long, so that is a failure; without, only samples that long are affected: a warning."""
    config, source = model_config(recipe, base_dir)
    positions = _positions(config or {})
    if positions is None:
        return []
    base, limit, described = positions
    over = [
        (index, training)
        for index, training in enumerate(recipe.stage_training(i) for i in range(len(recipe.stages)))
        if training.cutoff_len > limit
    ]
    name = "cutoff_len fits the model"
    if not over:
        longest = max(recipe.stage_training(i).cutoff_len for i in range(len(recipe.stages)))
        return [Check(name, OK, f"cutoff_len {longest} <= {described}")]
    index, training = max(over, key=lambda item: item[1].cutoff_len)
    override = recipe.stages[index].training
    key = (
        "training.cutoff_len"
        if override is None or override.cutoff_len is None
        else f"stages[{index}].training.cutoff_len"
    )
    rope = recipe.llamafactory.get("rope_scaling")
    factor = math.ceil(training.cutoff_len / base)
    if rope:
        detail = f"{key} {training.cutoff_len} > {described}; LLaMA-Factory scales RoPE ({rope}) x{factor}"
        return [Check(name, OK, detail)]
    packed = any(t.packing for _, t in over)
    effect = (
        "packing makes every sequence that long"
        if packed
        else f"samples longer than {limit} tokens run on positions the model never saw"
    )
    return [
        Check(
            name,
            FAIL if packed else WARN,
            f"{key} {training.cutoff_len} exceeds the model's {described} ({source}): {effect}",
            f"{key}: {limit} or less, or llamafactory.rope_scaling: yarn (LLaMA-Factory then stretches RoPE x{factor})",
        )
    ]


def _memory_checks(recipe: object, base_dir: Path, gpus: list[GPU], world: int) -> list[Check]:
    """DPO needs about twice SFT's memory (chosen + rejected, a reference pass): say so with numbers."""
    from lfw.infra.errors import UserError
    from lfw.preflight.memory.planner import GIB, estimate, plan_input
    from lfw.preflight.memory.shapes import resolve_arch

    stages = recipe.stages  # type: ignore[attr-defined]
    dpo = [i for i, s in enumerate(stages) if s.stage in ("dpo", "kto")]
    if not dpo:
        return []
    try:
        arch = resolve_arch(recipe.model.path, base_dir)  # type: ignore[attr-defined]
    except UserError:
        return [
            Check(
                "DPO memory",
                WARN,
                "DPO needs about twice the memory of SFT (chosen + rejected, reference)",
                "run lfw plan with --arch to size it",
            )
        ]
    inp = plan_input(recipe, dpo[0], arch, world)
    dpo_total = estimate(inp).total
    sft_total = estimate(type(inp)(**{**inp.__dict__, "stage": "sft", "pref_loss": None})).total
    detail = f"{dpo_total / GIB:.1f} GiB per GPU vs {sft_total / GIB:.1f} GiB for SFT at the same micro batch"
    memory = [gpu.memory_mib for gpu in gpus if gpu.memory_mib]
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


def run_doctor(
    loaded: object | None = None,
    env: Mapping[str, str] | None = None,
    version_of: VersionOf = installed_version,
    gpu_count: int | None = None,
) -> list[Check]:
    """All checks: environment first, then the recipe's when one is given."""
    env = os.environ if env is None else env
    checks = check_versions(version_of)
    checks.append(check_vllm(env))
    gpus = visible_gpus(env)
    checks += check_gpus(driver_version(), gpus, env)
    checks += check_caches(env)
    out_dir = Path(loaded.recipe.output_dir) if loaded is not None else Path.cwd()  # type: ignore[attr-defined]
    need = 20 * 2**30
    if loaded is not None:
        from lfw.infra.errors import UserError
        from lfw.preflight.memory.shapes import resolve_arch

        try:
            arch = resolve_arch(loaded.recipe.model.path, loaded.base_dir)  # type: ignore[attr-defined]
            full = loaded.recipe.method.type in ("full", "freeze")  # type: ignore[attr-defined]
            need = arch.params * (16 if full else 2) * 2  # two checkpoints (weights, + optimizer when full)
        except UserError:
            pass
        if not out_dir.is_absolute():
            out_dir = loaded.base_dir / out_dir  # type: ignore[attr-defined]
        checks.append(check_disk(out_dir, need))
        checks += check_recipe(loaded, version_of, gpus, gpu_count)
    else:
        checks.append(check_disk(out_dir, need))
    return checks
