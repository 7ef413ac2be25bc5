"""Producing the model files: LLaMA-Factory's own merge (``llamafactory-cli export``) or a copy of a full stage.

LLaMA-Factory does the merge, so the weights and the tokenizer fixes it made during training (eos, pad,
template jinja) are the same as in training. Its export runs as a plain subprocess in its own process group
(lfw.infra.processes), its output in ``export.log``; a failure is one error with the end of that log.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import yaml
from rich.console import Console

from lfw import __version__
from lfw.infra.errors import Problem, UserError
from lfw.infra.processes import run_logged, tail
from lfw.post.export.lineage import CONFIG_NAME, LINEAGE, VERIFY_NAME
from lfw.post.export.plan import ExportPlan, is_local

LOG_NAME = "export.log"
# Keys that the tokenizer saves when it was loaded offline; they would force offline loading on every user.
_MACHINE_KEYS = ("local_files_only",)
# Files of a training output folder that are not part of the model (copied away when exporting a full run).
_NOT_MODEL = (
    "checkpoint-*",
    "trainer_log.jsonl",
    "trainer_state.json",
    "training_args.bin",
    "*_results.json",
    "training_*.png",
    "runs",
    LINEAGE,
)


def render_export_config(plan: ExportPlan, export_size: int = 5, export_device: str = "cpu") -> str:
    """The LLaMA-Factory export YAML for a LoRA plan (checked against the installed LLaMA-Factory's keys)."""
    from lfw.recipe.lf_keys import known_keys
    from lfw.rendering.environment import render_template

    keys = known_keys()
    text = render_template(
        "export.yaml.j2",
        lfw_version=__version__,
        lf_version=keys.llamafactory,
        source=f"{plan.run_dir} stage {plan.stage}" if plan.stage else ", ".join(plan.adapters),
        config_name=CONFIG_NAME,
        base=plan.base,
        adapters=plan.adapters,
        template=plan.template,
        enable_thinking=plan.enable_thinking,
        trust_remote_code=plan.trust_remote_code,
        export_dir=str(plan.export_dir),
        export_size=export_size,
        export_device=export_device,
    )
    unknown = sorted(set(yaml.safe_load(text)) - keys.keys)
    if unknown:
        raise UserError(f"the export config uses keys LLaMA-Factory {keys.llamafactory} does not know: {unknown}")
    return text


def subprocess_env(plan: ExportPlan) -> dict[str, str]:
    """The environment of export's subprocesses: offline for a local base (no minutes of network timeouts)."""
    env = dict(os.environ)
    if is_local(plan.base):
        env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_step(cmd: Sequence[str], env: dict[str, str], log_path: Path, label: str) -> None:
    """Run one step of the export, its output to log_path; a failure is a UserError with the log's end."""
    code = run_logged(cmd, env, log_path)
    if code != 0:
        raise UserError([Problem(label, f"failed (exit {code}); last lines of {log_path}:\n" + tail(log_path, 25))])


def merge_adapters(plan: ExportPlan, staging: Path, export_size: int, console: Console) -> None:
    """Write the export config into `staging` and let LLaMA-Factory merge the adapters into the base there."""
    from lfw.launch.runner import llamafactory_cli

    config = staging / CONFIG_NAME
    config.write_text(render_export_config(plan, export_size=export_size), encoding="utf-8")
    # The YAML names the final folder (so it can be rerun by hand); this run writes to the staging one.
    cmd = [llamafactory_cli(), "export", str(config), f"export_dir={staging}"]
    console.print(f"merging {len(plan.adapters)} adapter(s) into {plan.base}")
    run_step(cmd, subprocess_env(plan), staging / LOG_NAME, "export")


def copy_model(source: Path, target: Path) -> None:
    """A full/freeze stage's model files (no checkpoints, trainer state or logs) into `target`."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*_NOT_MODEL), symlinks=True, dirs_exist_ok=True)


def strip_machine_keys(model_dir: Path) -> list[str]:
    """Drop `local_files_only` from the exported tokenizer/processor configs; returns the files changed.

    transformers saves the load-time flag with the tokenizer when it was exported offline, and every later
    load (vLLM's included) would then refuse to look at the hub even when the user wants it to.
    """
    changed = []
    for path in sorted(model_dir.glob("*.json")):
        if path.name in (LINEAGE, VERIFY_NAME):
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(data, dict) and any(key in data for key in _MACHINE_KEYS):
            for key in _MACHINE_KEYS:
                data.pop(key, None)
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            changed.append(path.name)
    return changed
