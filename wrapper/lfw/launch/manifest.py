"""manifest.json: everything needed to know later what a run was and to repeat it.

Versions are read from package metadata (no imports), the environment is filtered to what matters for a
run and scrubbed of secrets: nothing that looks like a key, token or password is ever written.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lfw.infra.versions import installed_versions

PACKAGES = (
    "lfw",
    "llamafactory",
    "torch",
    "transformers",
    "deepspeed",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "swanlab",
    "bitsandbytes",
    "liger-kernel",
    "flash-attn",
)
_ENV_PREFIXES = (
    "CUDA_",
    "NCCL_",
    "HF_",
    "TRANSFORMERS_",
    "FORCE_TORCHRUN",
    "NPROC_PER_NODE",
    "NNODES",
    "NODE_RANK",
    "MASTER_",
    "WORLD_SIZE",
    "SWANLAB_",
    "DISABLE_VERSION_CHECK",
    "LLAMAFACTORY_",
    "PYTORCH_",
    "OMP_NUM_THREADS",
    "TORCH_",
    "DS_",
    "LFW_",
    "USE_RAY",
    "WANDB_",
    "MLFLOW_",
)
_SECRET = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)


def package_versions() -> dict[str, str | None]:
    return installed_versions(PACKAGES)


def safe_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The run-relevant variables; secrets are named but their values never written."""
    kept = {}
    for key in sorted(env):
        if not key.startswith(_ENV_PREFIXES):
            continue
        kept[key] = "<set, not recorded>" if _SECRET.search(key) else env[key]
    return kept


def git_commit(directory: Path) -> dict[str, Any] | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    """Write atomically, so a crash mid-write never leaves a half manifest."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n")
    tmp.replace(path)


def base_manifest(**fields: Any) -> dict[str, Any]:
    return {"created": now(), "python": sys.version.split()[0], "versions": package_versions(), **fields}
