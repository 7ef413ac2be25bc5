"""What an export does, decided before anything is written: which stage, base, adapters, template and folder.

The adapter stack is read from the stage configs the run actually trained with (not re-derived from the
recipe): a stage with ``create_new_adapter`` trained a new adapter on top of the merged earlier ones, a stage
without it kept training the last one (QLoRA chaining), so the stack to merge is exactly what training saw.
The base is the unquantized model even after QLoRA: LLaMA-Factory refuses to merge into a 4/8-bit model and
a merge into dequantized weights would not be the model that was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lfw.infra.errors import Problem, UserError


@dataclass
class ExportPlan:
    """Everything an export needs, decided before anything is written."""

    kind: str  # "lora" (merge adapters) or "full" / "freeze" (the stage output already is the model)
    base: str  # the unquantized base for LoRA; the stage output for full/freeze
    adapters: list[str]
    template: str
    export_dir: Path
    enable_thinking: bool | None = None
    trust_remote_code: bool = False
    run_dir: Path | None = None
    stage: str | None = None
    recipe_path: Path | None = None
    trained_base: str | None = None  # the base named in training, when --base replaced it
    trained_quantization: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def in_place(self) -> bool:
        """Full/freeze exports that stay in the stage folder: only lineage and checks are added."""
        return self.kind != "lora" and self.export_dir.resolve() == Path(self.base).resolve()

    def local_inputs(self) -> list[Path]:
        """The base and adapters that are folders here (what the export reads and must not overwrite)."""
        return [Path(p).expanduser().resolve() for p in (self.base, *self.adapters) if is_local(p)]


def is_local(model: str) -> bool:
    """The model is a folder on this machine (not a hub id)."""
    return Path(model).expanduser().exists()


def _local_or_hub(model: str) -> str:
    """A local base as an absolute path (so the rendered YAML works from any folder); a hub id as given."""
    return str(Path(model).expanduser().resolve()) if is_local(model) else model


def read_yaml(path: Path) -> dict[str, Any]:
    """A LLaMA-Factory config as a mapping, or one clear error naming the file."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError([Problem(str(path), f"cannot read: {err}")]) from err
    if not isinstance(data, dict):
        raise UserError([Problem(str(path), "not a LLaMA-Factory config (a YAML mapping)")])
    return data


def split_list(value: Any) -> list[str]:
    """LLaMA-Factory's list values: a YAML list or a comma-separated string."""
    if not value:
        return []
    items = value if isinstance(value, list) else str(value).split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def adapter_stack(stage_config: dict[str, Any]) -> list[str]:
    """The adapters that make up a LoRA stage's model, in merge order, as LLaMA-Factory built it in training.

    LLaMA-Factory (model/adapter.py) merges every listed adapter and adds a new one when create_new_adapter
    is set; otherwise it merges all but the last and keeps training the last, whose saved copy (the stage's
    output) replaces it.
    """
    loaded = split_list(stage_config.get("adapter_name_or_path"))
    output = str(stage_config["output_dir"])
    if stage_config.get("create_new_adapter") or not loaded:
        return [*loaded, output]
    return [*loaded[:-1], output]


def _pick_stage(stages: list[dict[str, Any]], wanted: str | None, run_dir: Path) -> int:
    """Index of the stage to export: the last by default, else by folder name, stage type or 1-based number."""
    if wanted is None:
        return len(stages) - 1
    names = [str(s["name"]) for s in stages]
    if wanted in names:
        return names.index(wanted)
    if wanted.isdigit() and 1 <= int(wanted) <= len(stages):
        return int(wanted) - 1
    by_type = [i for i, name in enumerate(names) if name.split("-", 1)[-1] == wanted]
    if len(by_type) == 1:
        return by_type[0]
    fix = f"use one of: {', '.join(names)} (or its number)"
    raise UserError([Problem(f"--stage {wanted}", f"no such stage in {run_dir}", fix)])


def _run_stages(run_dir: Path) -> list[dict[str, Any]]:
    """The stages recorded in a run's manifest; a folder that is no run is refused with what to pass instead."""
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        hint = (
            "this is a LoRA adapter folder: use lfw export --adapter " + str(run_dir)
            if (run_dir / "adapter_config.json").is_file()
            else "pass a run directory made by `lfw run`"
        )
        raise UserError([Problem(str(run_dir), "no manifest.json here", hint)])
    stages = json.loads(manifest_path.read_text(encoding="utf-8")).get("stages") or []
    if not stages:
        raise UserError([Problem(str(manifest_path), "the run has no stages")])
    return list(stages)


def _check_finished(stages: list[dict[str, Any]], index: int, run_dir: Path) -> None:
    """The stage to export and every stage before it finished (its model is built on theirs)."""
    for earlier in stages[: index + 1]:
        if earlier.get("status") != "ok":
            done = [s["name"] for s in stages if s.get("status") == "ok"]
            fix = (
                f"export a finished stage with --stage {done[-1]}"
                if done
                else "finish the run first (lfw run ... --resume)"
            )
            status = earlier.get("status", "unknown")
            raise UserError([Problem(str(run_dir), f"stage {earlier['name']} is {status}, not finished", fix)])


def _template_notes(chosen: str | None, trained: str | None, why: str) -> list[str]:
    """A warning when --template replaces the template the model was trained with."""
    if chosen and trained and chosen != trained:
        return [f"template {chosen} replaces the training template {trained}{why}"]
    return []


def plan_from_run(
    run_dir: Path,
    *,
    stage: str | None = None,
    base: str | None = None,
    template: str | None = None,
    output: Path | None = None,
) -> ExportPlan:
    """Plan the export of one stage (default: the last) of a run made by `lfw run`."""
    run_dir = run_dir.expanduser().resolve()
    stages = _run_stages(run_dir)
    index = _pick_stage(stages, stage, run_dir)
    _check_finished(stages, index, run_dir)
    record = stages[index]
    config = read_yaml(run_dir / record["config"])
    config.setdefault("output_dir", record["output_dir"])
    trained_template = str(config.get("template") or "")
    if not (template or trained_template):
        raise UserError([Problem(str(run_dir / record["config"]), "names no template", "pass --template")])
    quantization = None
    if config.get("quantization_bit"):
        quantization = {"bits": config["quantization_bit"], "method": config.get("quantization_method")}
    default_out = run_dir / ("export" if index == len(stages) - 1 else f"export-{record['name']}")
    plan = ExportPlan(
        kind=str(config.get("finetuning_type", "lora")),
        base=str(config["model_name_or_path"]),
        adapters=[],
        template=template or trained_template,
        export_dir=default_out,
        enable_thinking=config.get("enable_thinking"),
        trust_remote_code=bool(config.get("trust_remote_code")),
        run_dir=run_dir,
        stage=str(record["name"]),
        recipe_path=run_dir / "recipe.yaml",
        trained_base=str(config["model_name_or_path"]),
        trained_quantization=quantization,
        notes=_template_notes(
            template, trained_template, ": served prompts will differ from the ones the model was trained on"
        ),
    )
    if plan.kind in ("full", "freeze"):
        return _target_whole(plan, config, base, output)
    return _target_lora(plan, config, base, output)


def _target_whole(plan: ExportPlan, config: dict[str, Any], base: str | None, output: Path | None) -> ExportPlan:
    """A full/freeze stage: its output folder is the model, exported in place unless -o names another."""
    if base:
        problem = f"a {plan.kind} run's stage output is the whole model; there is no base to merge into"
        raise UserError([Problem("--base", problem, "leave out --base")])
    plan.base = str(config["output_dir"])
    plan.export_dir = (output or Path(plan.base)).resolve()
    return plan


def _target_lora(plan: ExportPlan, config: dict[str, Any], base: str | None, output: Path | None) -> ExportPlan:
    """A LoRA stage: its adapter stack merged into the base (--base replaces the trained one)."""
    trained_base = plan.base
    plan.kind = "lora"
    plan.base = _local_or_hub(base or trained_base)
    plan.adapters = adapter_stack(config)
    plan.export_dir = (output or plan.export_dir).expanduser().resolve()
    plan.trained_base = trained_base if plan.base != trained_base else None
    return plan


def _adapter_paths(adapters: list[str]) -> list[Path]:
    """The --adapter folders (each may be comma-separated), each checked to be a PEFT adapter."""
    paths = [Path(a).expanduser().resolve() for item in adapters for a in split_list(item)]
    problems = [
        Problem(f"--adapter {path}", "has no adapter_config.json (not a PEFT adapter)")
        for path in paths
        if not (path / "adapter_config.json").is_file()
    ]
    if problems:
        raise UserError(problems)
    return paths


def plan_from_adapters(
    adapters: list[str], *, base: str | None = None, template: str | None = None, output: Path | None = None
) -> ExportPlan:
    """Plan a merge of adapter folders given by hand (`--adapter`, repeatable, merged in the order given)."""
    paths = _adapter_paths(adapters)
    adapter_config = json.loads((paths[0] / "adapter_config.json").read_text(encoding="utf-8"))
    # An adapter inside an lfw run has its stage config beside it: take the training template from there.
    stage_config = paths[-1].parent / f"{paths[-1].name}.yaml"
    trained = read_yaml(stage_config) if stage_config.is_file() else {}
    chosen_base = base or adapter_config.get("base_model_name_or_path")
    if not chosen_base:
        raise UserError([Problem("--base", "the adapter does not name its base model", "pass --base MODEL")])
    chosen_template = template or trained.get("template")
    if not chosen_template:
        raise UserError(
            [
                Problem(
                    "--template",
                    "the training template is unknown for these adapters",
                    "pass --template with the template used in training (e.g. qwen3_nothink)",
                )
            ]
        )
    recipe = paths[-1].parent / "recipe.yaml"
    return ExportPlan(
        kind="lora",
        base=_local_or_hub(str(chosen_base)),
        adapters=[str(p) for p in paths],
        template=str(chosen_template),
        export_dir=(output or paths[-1].parent / f"{paths[-1].name}-merged").expanduser().resolve(),
        enable_thinking=trained.get("enable_thinking"),
        trust_remote_code=bool(trained.get("trust_remote_code")),
        run_dir=recipe.parent if recipe.is_file() else None,
        recipe_path=recipe if recipe.is_file() else None,
        notes=_template_notes(template, trained.get("template"), ""),
    )
