"""Rendering: a validated recipe plus a target machine in, every file of a run out.

One LLaMA-Factory train YAML per stage (Jinja2 templates, StrictUndefined), a DeepSpeed JSON when asked,
and a dataset_info.json with absolute paths so the run works from any directory. Output is a pure function
of (recipe, target, run directory, installed versions, and the CPU count for the worker defaults: `$LFW_CPUS`
pins it): render twice, get the same bytes. The context of a stage is built in lfw.rendering.context.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from lfw.infra.errors import ProblemCollector
from lfw.launch.target import Target
from lfw.preflight.memory.shapes import read_config
from lfw.recipe.lf_keys import known_keys
from lfw.recipe.loader import LoadedRecipe
from lfw.rendering.checks import check_rendered, check_template, template_problems
from lfw.rendering.context import RunFacts, stage_context
from lfw.rendering.dataset_info import DATASET_INFO, build_dataset_info, model_location, resolve_path
from lfw.rendering.environment import environment, render_template
from lfw.rendering.tokenized import cache_key, cache_root

# Re-exported: callers name these from lfw.rendering.render.
__all__ = [
    "DATASET_INFO",
    "RenderedFile",
    "RenderedStage",
    "Rendering",
    "build_dataset_info",
    "deepspeed_json",
    "model_location",
    "render",
    "render_template",
    "resolve_path",
    "template_problems",
]


@dataclass(frozen=True)
class RenderedFile:
    """One file of a run: its name inside the run directory and its exact content."""

    name: str
    content: str


@dataclass(frozen=True)
class RenderedStage:
    """What a stage needs at launch: its train YAML and the folder LLaMA-Factory writes to."""

    index: int
    name: str
    config: str
    output_dir: Path


@dataclass(frozen=True)
class Rendering:
    files: list[RenderedFile]
    stages: list[RenderedStage]

    def listing(self) -> str:
        """Every file with a `# ==> name <==` line before it (what `lfw render` and `lfw run --dry-run` print)."""
        return "".join(f"# ==> {item.name} <==\n{item.content}" for item in self.files)

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for item in self.files:
            path = directory / item.name
            path.write_text(item.content, encoding="utf-8")
            written.append(path)
        return written


def deepspeed_json(kind: str) -> str:
    """The DeepSpeed config lfw writes for `hardware.deepspeed: kind` (also what `lfw import` compares against)."""
    stage_number = {"z0": 0, "z2": 2, "z3": 3, "z3_offload": 3}[kind]
    content = render_template("deepspeed.json.j2", stage=stage_number, offload=kind == "z3_offload")
    json.loads(content)  # the template must always give valid JSON
    return content


def render(loaded: LoadedRecipe, target: Target, run_dir: Path) -> Rendering:
    """Render every file of a run whose directory will be `run_dir` (absolute paths point into it)."""
    recipe = loaded.recipe
    run_dir = run_dir.resolve()
    keys = known_keys()
    problems = ProblemCollector()
    info, names_per_stage = build_dataset_info(loaded)
    check_template(loaded, keys, info, names_per_stage, problems)

    files = [RenderedFile(DATASET_INFO, json.dumps(info, indent=2, ensure_ascii=False) + "\n")]
    deepspeed_path = None
    if recipe.hardware.deepspeed != "none":
        name = f"ds_{recipe.hardware.deepspeed}.json"
        files.append(RenderedFile(name, deepspeed_json(recipe.hardware.deepspeed)))
        deepspeed_path = str(run_dir / name)
    model_path = model_location(recipe.model.path, loaded.base_dir)
    run = RunFacts(
        loaded, target, run_dir, keys, info, names_per_stage, deepspeed_path, model_path, read_config(Path(model_path))
    )
    template = environment().get_template("train.yaml.j2")
    tokenized_root = cache_root(run_dir)
    stages: list[RenderedStage] = []
    for index in range(len(recipe.stages)):
        context = stage_context(run, index, [stage.output_dir for stage in stages], problems)
        if context is None:
            continue
        rendered = yaml.safe_load(template.render(**context, tokenized_path=None))  # passthrough keys count too
        text = template.render(
            **context, tokenized_path=str(tokenized_root / cache_key(rendered, info, keys.llamafactory))
        )
        check_rendered(yaml.safe_load(text), keys, problems)
        stage_name = recipe.stage_dir_name(index)
        files.append(RenderedFile(f"{stage_name}.yaml", text))
        stages.append(RenderedStage(index, stage_name, f"{stage_name}.yaml", Path(context["output_dir"])))
    problems.raise_if_any(f"{loaded.path}: cannot render for {target.describe()}")
    return Rendering(files, stages)
