"""lfw: short recipes rendered into complete LLaMA-Factory runs.

The Python API (`lfw.load_recipe`, `lfw.render`, `lfw.plan`, `lfw.check_data`, `lfw.run`) lives in `lfw.api`;
the names resolve on first use, so `import lfw` (and every worker that imports a submodule) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_API = {"load_recipe", "render", "plan", "check_data", "run", "target_for", "MemoryPlan", "StagePlan"}
__all__ = [
    "MemoryPlan",
    "StagePlan",
    "UserError",
    "__version__",
    "check_data",
    "load_recipe",
    "plan",
    "render",
    "run",
    "target_for",
]

if TYPE_CHECKING:
    from lfw.api import MemoryPlan, StagePlan, check_data, load_recipe, plan, render, run, target_for
    from lfw.infra.errors import UserError


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module("lfw.api"), name)
    if name == "UserError":
        return importlib.import_module("lfw.infra.errors").UserError
    raise AttributeError(f"module 'lfw' has no attribute {name!r}")
