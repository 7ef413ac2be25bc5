"""The environment a run would meet: packages, the vLLM interpreter, GPUs, the Hugging Face caches, disk.

Versions come from package metadata (`lfw.infra.versions`), the GPUs from `lfw.infra.hardware` (nvidia-smi under
CUDA_VISIBLE_DEVICES, as `lfw run` sees them), the vLLM interpreter from `lfw.infra.vllm_env` (the one
`lfw serve` and `lfw eval` would start): nothing heavy is imported.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

from lfw.infra.errors import UserError
from lfw.infra.hardware import GPU
from lfw.infra.versions import installed_version
from lfw.infra.vllm_env import NoVllmError, vllm_python, vllm_version
from lfw.preflight.doctor.result import FAIL, OK, WARN, Check, VersionOf

# name shown -> distribution name; the REQUIRED ones are needed to train at all.
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
# What an optional package is for, said when it is missing.
OPTIONAL_USE = {
    "deepspeed": "needed for hardware.deepspeed",
    "bitsandbytes": "needed for QLoRA",
    "flash-attn": "optional; sdpa is used instead",
    "liger-kernel": "needed for training.liger_kernel",
}


def check_versions(version_of: VersionOf = installed_version) -> list[Check]:
    """Each package's version; a missing required one fails, a missing optional one warns with its use."""
    checks = []
    for shown, dist in PACKAGES.items():
        version = version_of(dist)
        if version:
            checks.append(Check(shown, OK, version))
        elif dist in REQUIRED:
            checks.append(Check(shown, FAIL, "not installed", f"pip install {dist} (lfw targets llamafactory==0.9.5)"))
        else:
            use = OPTIONAL_USE[dist]
            checks.append(Check(shown, WARN, f"not installed ({use})", f"pip install {dist} where needed"))
    return checks


def check_vllm(env: Mapping[str, str]) -> Check:
    """The interpreter `lfw serve` and `lfw eval` would start, found the same way (lfw.infra.vllm_env)."""
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
        fix = "precision: auto or fp16 (lfw's auto picks fp16 there)"
        checks.append(Check("bf16", WARN, f"not supported by {', '.join(no_bf16)}", fix))
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
            detail = f"{path}: {error} (lock files cannot be created)"
            fix = f"export HF_HOME to a folder you own, or fix ownership: chown -R $USER {path}"
            checks.append(Check(f"{name} writable", FAIL, detail, fix))
        else:
            checks.append(Check(f"{name} writable", OK, str(path)))
    return checks


def check_disk(path: Path, need_bytes: float) -> Check:
    """Free space where the checkpoints go (the nearest existing folder) against what they need."""
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
