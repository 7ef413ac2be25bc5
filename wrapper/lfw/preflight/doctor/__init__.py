"""`lfw doctor`: the environment and a recipe checked for the failures the seeds' users hit after launch.

Each check is a small named function that says ok / warn / fail and, when not ok, the fix; any fail makes
`lfw doctor` exit 1. result: the `Check` verdict; environment: packages, vLLM, GPUs, caches, disk;
recipe: the recipe's bad combinations (`RECIPE_CHECKS`); templates and context: the chat template and
cutoff_len against the model; suite: `run_doctor`, all of them in order. Nothing here imports torch.
"""

from lfw.preflight.doctor.context import check_context_length
from lfw.preflight.doctor.environment import check_caches, check_disk, check_gpus, check_versions, check_vllm
from lfw.preflight.doctor.recipe import RECIPE_CHECKS, RecipeFacts, check_recipe
from lfw.preflight.doctor.result import FAIL, OK, WARN, Check
from lfw.preflight.doctor.suite import run_doctor

__all__ = [
    "FAIL",
    "OK",
    "RECIPE_CHECKS",
    "WARN",
    "Check",
    "RecipeFacts",
    "check_caches",
    "check_context_length",
    "check_disk",
    "check_gpus",
    "check_recipe",
    "check_versions",
    "check_vllm",
    "run_doctor",
]
