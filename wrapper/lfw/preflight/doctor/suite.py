"""`lfw doctor`'s whole run: the environment first, then, given a recipe, its disk need and its checks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from lfw.infra.errors import UserError
from lfw.infra.hardware import driver_version, visible_gpus
from lfw.infra.versions import installed_version
from lfw.preflight.doctor.environment import check_caches, check_disk, check_gpus, check_versions, check_vllm
from lfw.preflight.doctor.recipe import check_recipe
from lfw.preflight.doctor.result import Check, VersionOf
from lfw.recipe.loader import LoadedRecipe

# Without a recipe (or a model whose size is unknown), what checkpoints are assumed to need.
DEFAULT_DISK_NEED = 20 * 2**30


def checkpoint_bytes(loaded: LoadedRecipe) -> float:
    """About two checkpoints: the weights (bf16), plus the optimizer state when every weight trains."""
    from lfw.preflight.memory.shapes import resolve_arch

    try:
        arch = resolve_arch(loaded.recipe.model.path, loaded.base_dir)
    except UserError:
        return DEFAULT_DISK_NEED
    full = loaded.recipe.method.type in ("full", "freeze")
    return arch.params * (16 if full else 2) * 2


def run_doctor(
    loaded: LoadedRecipe | None = None,
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
    if loaded is None:
        checks.append(check_disk(Path.cwd(), DEFAULT_DISK_NEED))
        return checks
    out_dir = Path(loaded.recipe.output_dir)
    if not out_dir.is_absolute():
        out_dir = loaded.base_dir / out_dir
    checks.append(check_disk(out_dir, checkpoint_bytes(loaded)))
    return checks + check_recipe(loaded, version_of, gpus, gpu_count)
