"""Rendering: a validated recipe plus a target machine in, every file of a run out.

One LLaMA-Factory train YAML per stage (Jinja2 templates, StrictUndefined), a DeepSpeed JSON when asked,
and a dataset_info.json with absolute paths so the run works from any directory. Output is a pure function
of (recipe, target, run directory, installed versions): render twice, get the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import yaml

from lfw import __version__
from lfw.infra.errors import Problem, ProblemCollector, UserError
from lfw.launch.target import Target, gradient_accumulation, precision_flags
from lfw.preflight.data.check import SAMPLE_ROWS, DataFormat, dataset_layout
from lfw.preflight.memory.shapes import read_config
from lfw.recipe.hub_data import hub_name, hub_rows, hub_source
from lfw.recipe.lf_keys import KeySet, cache_dir, known_keys
from lfw.recipe.loader import LoadedRecipe
from lfw.recipe.schema import DatasetSpec
from lfw.rendering.stage_models import stage_models
from lfw.rendering.tokenized import cache_key, cache_root
from lfw.rendering.tracking import report_to

DATASET_INFO = "dataset_info.json"


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


def _yaml_scalar(value: Any) -> str:
    """A value as YAML text: strings always quoted (JSON quoting is valid YAML), no surprises like 'no'."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, float):
        text = repr(value)  # YAML 1.1 (PyYAML) reads 3e-05 as a string: the mantissa needs a dot
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    return json.dumps(value, ensure_ascii=False)


_JINJA_OPTIONS: dict[str, Any] = {
    "undefined": jinja2.StrictUndefined,
    "keep_trailing_newline": True,
    "trim_blocks": True,
    "lstrip_blocks": True,
    "autoescape": False,
}


class _TemplateCache(jinja2.FileSystemBytecodeCache):
    """Compiled templates on disk: parsing them was most of a render's own time. jinja2 checks each entry against
    the template's source; a cache it cannot read or write costs a recompile, never an error."""

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        try:
            super().load_bytecode(bucket)
        except (OSError, EOFError, ValueError, TypeError):
            bucket.reset()

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        with contextlib.suppress(OSError):
            super().dump_bytecode(bucket)


def _template_cache() -> _TemplateCache | None:
    # The folder is keyed by jinja2's version and the options, which change the compiled code but not the source.
    tag = hashlib.sha256(repr((jinja2.__version__, sorted(_JINJA_OPTIONS.items()))).encode()).hexdigest()[:16]
    folder = cache_dir() / "jinja2" / tag
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return _TemplateCache(str(folder))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.files("lfw") / "assets" / "templates")),
        bytecode_cache=_template_cache(),
        **_JINJA_OPTIONS,
    )
    env.filters["yaml"] = _yaml_scalar
    return env


def resolve_path(text: str, base_dir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def model_location(text: str, base_dir: Path) -> str:
    """A local folder as an absolute path; anything else that looks like org/name stays a hub id."""
    local = resolve_path(text, base_dir)
    looks_local = text.startswith((".", "/", "~")) or local.exists() or text.count("/") > 1
    return str(local) if looks_local else text


def _data_path(spec: DatasetSpec, base_dir: Path) -> Path | None:
    """The local data's absolute path; None for a hub dataset (`id:`)."""
    return None if spec.path is None else resolve_path(spec.path, base_dir)


def _layout(spec: DatasetSpec, path: Path | None) -> DataFormat:
    """The data's layout as `lfw data check` reads it: one source for what dataset_info.json registers.

    Hub data: read from its head in the local datasets cache (never the network: rendering stays offline), else
    the format's defaults plus the recipe's columns and tags.
    """
    rows = (hub_rows(spec, SAMPLE_ROWS, offline=True)[0] or []) if path is None else None
    return dataset_layout(path or str(spec.id), spec.format, columns=spec.columns, tags=spec.tags, rows=rows)


def _dataset_entry(spec: DatasetSpec, path: Path | None) -> dict[str, Any]:
    """Every LLaMA-Factory column the data has (system, history, tools, media, ...), under its real key."""
    entry = _layout(spec, path).dataset_info_entry(str(path))
    if path is None:  # hf_hub_url / ms_hub_url (+ subset, split, folder) in place of file_name
        entry = hub_source(spec) | {key: value for key, value in entry.items() if key != "file_name"}
    return entry


def _dataset_name(spec: DatasetSpec, path: Path | None) -> str:
    if spec.name:
        return spec.name
    if path is None:
        return hub_name(spec)
    return re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem if path.suffix else path.name)


def build_dataset_info(loaded: LoadedRecipe) -> tuple[dict[str, Any], list[list[str]]]:
    """dataset_info.json for all stages, and each stage's dataset names; same data, same name."""
    info: dict[str, Any] = {}
    names_per_stage = []
    for index, stage in enumerate(loaded.recipe.stages):
        names = []
        for ds_index, spec in enumerate(stage.datasets):
            path = _data_path(spec, loaded.base_dir)
            try:
                entry = _dataset_entry(spec, path)
            except UserError as err:  # a column name LLaMA-Factory does not have
                where = f"stages[{index}].datasets[{ds_index}]"
                raise UserError([Problem(f"{where}.{p.where}", p.message, p.fix) for p in err.problems]) from None
            name = _dataset_name(spec, path)
            if name in info and info[name] != entry:
                if spec.name:
                    raise UserError(
                        [
                            Problem(
                                f"stages[{index}].datasets[{ds_index}].name",
                                f"{name!r} already names other data",
                                "give each dataset a distinct name",
                            )
                        ]
                    )
                suffix = 2
                while f"{name}_{suffix}" in info and info[f"{name}_{suffix}"] != entry:
                    suffix += 1
                name = f"{name}_{suffix}"
            info[name] = entry
            names.append(name)
        names_per_stage.append(names)
    return info, names_per_stage


def _media_dir(loaded: LoadedRecipe, stage_index: int) -> str | None:
    """LLaMA-Factory resolves image paths against one media_dir: the multimodal data's own folder."""
    folders = set()
    for spec in loaded.recipe.stages[stage_index].datasets:
        data_path = _data_path(spec, loaded.base_dir)
        if spec.media_dir:
            folders.add(str(resolve_path(spec.media_dir, loaded.base_dir)))
        elif data_path is not None and (spec.format == "multimodal" or _layout(spec, data_path).media):
            folders.add(str(data_path.parent))  # hub data carries its media (bytes, URLs) in the rows
    if len(folders) > 1:
        raise UserError(
            [
                Problem(
                    f"stages[{stage_index}].datasets",
                    "multimodal datasets with media in different folders",
                    "set the same media_dir on each (LLaMA-Factory has one media_dir per run)",
                )
            ]
        )
    return folders.pop() if folders else None


def _warmup(training: Any, keys: KeySet) -> tuple[str | None, float | int | None]:
    """transformers 5 takes a ratio as a float warmup_steps and deprecates (5.17: rejects) warmup_ratio."""
    if training.warmup_steps is not None:
        return "warmup_steps", training.warmup_steps
    if training.warmup_ratio is None:
        return None, None
    if int(keys.transformers.split(".")[0]) >= 5 or "warmup_ratio" not in keys:
        return "warmup_steps", training.warmup_ratio
    return "warmup_ratio", training.warmup_ratio


def _auto_micro_batch(loaded: LoadedRecipe, index: int, target: Target) -> int:
    """`micro_batch_size: auto`: 1 on CPU, else the memory planner's pick for the smallest GPU used (detected,
    or LFW_GPU_MEM_GIB when rendering for GPUs that are not on this machine)."""
    if target.device == "cpu":
        return 1
    from lfw.preflight.memory.planner import GIB, auto_micro_batch
    from lfw.preflight.memory.shapes import resolve_arch

    used = [gpu.memory_mib for gpu in target.gpus[: target.procs_per_node] if gpu.memory_mib]
    env_gib = os.environ.get("LFW_GPU_MEM_GIB")
    if env_gib:
        gpu_bytes = float(env_gib) * GIB
    elif used:
        gpu_bytes = min(used) * 2**20
    else:
        raise UserError(
            [
                Problem(
                    "training.micro_batch_size",
                    "auto needs the GPU memory, and no GPU is visible here",
                    "set LFW_GPU_MEM_GIB=80 (GiB per GPU) or give a number; `lfw plan --gpu-mem` shows the choice",
                )
            ]
        )
    arch = resolve_arch(loaded.recipe.model.path, loaded.base_dir)
    return auto_micro_batch(loaded.recipe, index, arch, target.world_size, gpu_bytes)


def _check_rendered(config: dict[str, Any], keys: KeySet, problems: ProblemCollector) -> None:
    """Every rendered value must mean to LLaMA-Factory what it says: a known key, its type, one of its enum values.

    LF's parser keeps what it does not understand (`quantization_method: bitsandbytes` quantized nothing), so the
    parser accepting a file proves little; passthrough values were checked at load, so a problem here is lfw's.
    """
    for key, value in config.items():
        problem = keys.value_problem(key, value)
        if problem:
            problems.add(f"rendered {key}", problem, "report this lfw bug; meanwhile pin the versions lfw supports")


_MEDIA_COLUMNS = {"images": "image", "videos": "video", "audios": "audio"}


def _check_template(
    loaded: LoadedRecipe,
    keys: KeySet,
    info: dict[str, Any],
    names_per_stage: list[list[str]],
    problems: ProblemCollector,
) -> None:
    """The chat template exists in the installed LLaMA-Factory and its plugin handles the media in the data."""
    name = loaded.recipe.model.template
    unknown = keys.template_problem(name)
    if unknown:
        problems.add("model.template", *unknown)
        return
    handled = keys.templates[name]
    for index, names in enumerate(names_per_stage):
        for ds_index, ds_name in enumerate(names):
            columns = info[ds_name].get("columns", {})
            for column, medium in _MEDIA_COLUMNS.items():
                if column in columns and medium not in handled:
                    can = sorted(
                        (not t.startswith("qwen"), t) for t, media in keys.templates.items() if medium in media
                    )
                    problems.add(
                        f"stages[{index}].datasets[{ds_index}]",
                        f"the data has {column} but template {name!r} is text-only for {medium}s "
                        "(LLaMA-Factory would drop them or fail)",
                        f"use the template of a model that reads {medium}s, e.g. {', '.join(t for _, t in can[:4])}",
                    )


def deepspeed_json(kind: str) -> str:
    """The DeepSpeed config lfw writes for `hardware.deepspeed: kind` (also what `lfw import` compares against)."""
    stage_number = {"z0": 0, "z2": 2, "z3": 3, "z3_offload": 3}[kind]
    content = _environment().get_template("deepspeed.json.j2").render(stage=stage_number, offload=kind == "z3_offload")
    json.loads(content)  # the template must always give valid JSON
    return content


def template_problems(loaded: LoadedRecipe) -> list[Problem]:
    """The template checks of `render` on their own (for `lfw doctor`): registered, and reads the data's media."""
    info, names_per_stage = build_dataset_info(loaded)
    problems = ProblemCollector()
    _check_template(loaded, known_keys(), info, names_per_stage, problems)
    return problems.problems


def render(loaded: LoadedRecipe, target: Target, run_dir: Path) -> Rendering:
    """Render every file of a run whose directory will be `run_dir` (absolute paths point into it)."""
    recipe = loaded.recipe
    run_dir = run_dir.resolve()
    keys = known_keys()
    env = _environment()
    problems = ProblemCollector()
    info, names_per_stage = build_dataset_info(loaded)
    _check_template(loaded, keys, info, names_per_stage, problems)

    files = [RenderedFile(DATASET_INFO, json.dumps(info, indent=2, ensure_ascii=False) + "\n")]
    deepspeed_path = None
    if recipe.hardware.deepspeed != "none":
        kind = recipe.hardware.deepspeed
        content = deepspeed_json(kind)
        name = f"ds_{kind}.json"
        files.append(RenderedFile(name, content))
        deepspeed_path = str(run_dir / name)

    method = recipe.method
    tokenized_root = cache_root(run_dir)
    stages = []
    earlier_outputs: list[Path] = []
    model_path = model_location(recipe.model.path, loaded.base_dir)
    config = read_config(Path(model_path))  # a GPTQ/AWQ checkpoint holds one adapter only, like a 4-bit base
    prequantized = ((config or {}).get("quantization_config") or {}).get("quant_method")
    for index, stage in enumerate(recipe.stages):
        where = f"stages[{index}].training" if stage.training else "training"
        training = recipe.stage_training(index)
        try:
            if training.micro_batch_size == "auto":
                micro = _auto_micro_batch(loaded, index, target)
                training = training.model_copy(update={"micro_batch_size": micro})
            grad_accum = gradient_accumulation(training, target, where)
            precision = precision_flags(training, target, where)
        except UserError as err:
            problems.problems.extend(err.problems)
            continue
        stage_name = recipe.stage_dir_name(index)
        output_dir = run_dir / stage_name
        models = stage_models(recipe, index, model_path, [str(p) for p in earlier_outputs], prequantized)
        for key in ("add_tokens", "add_special_tokens"):
            if models.reference == "copy" and key in recipe.llamafactory:
                problems.add(  # ModelArguments.copyfrom re-splits the already split list: LF 0.9.5 crashes
                    f"llamafactory.{key}",
                    f"LLaMA-Factory 0.9.5 crashes loading the reference model of stage {stage_name} with {key}",
                    "add the tokens to the tokenizer of the base model instead, or use a reference-free pref_loss",
                )
        warmup_key, warmup_value = _warmup(training, keys)
        swanlab = recipe.tracking.swanlab
        context = {
            "lfw_version": __version__,
            "recipe_path": loaded.display_path,
            "overrides": loaded.overrides,
            "stage_number": index + 1,
            "stage_count": len(recipe.stages),
            "target_summary": target.describe(),
            "run_hint": f"lfw run {loaded.display_path}",
            "lf_version": keys.llamafactory,
            "tf_version": keys.transformers,
            "stage": stage,
            "model": recipe.model,
            "model_path": models.base,
            "models": models,
            "quantization": method.quantization,
            "finetuning_type": models.finetuning_type,
            "lora": method.lora,
            "lora_alpha": method.lora.alpha or 2 * method.lora.rank,
            "freeze_trainable_layers": method.freeze_trainable_layers,
            "deepspeed_path": deepspeed_path,
            "dataset_dir": str(run_dir),
            "dataset_names": names_per_stage[index],
            "media_dir": _media_dir(loaded, index),
            "training": training,
            "output_dir": str(output_dir),
            "swanlab": swanlab,
            "swanlab_logdir": str(run_dir / "swanlog"),
            "report_to": report_to(recipe),
            "run_name": f"{run_dir.name}-{stage_name}",
            "swanlab_run_name": (swanlab.experiment if swanlab and swanlab.experiment else run_dir.name)
            + f"-{stage_name}",
            "grad_accum": grad_accum,
            "warmup_key": warmup_key,
            "warmup_value": warmup_value,
            "precision": precision,
            "distributed": target.world_size > 1,
            "passthrough": {},
        }
        template = env.get_template("train.yaml.j2")
        values = {**context, "passthrough": recipe.llamafactory}
        rendered = yaml.safe_load(template.render(**values, tokenized_path=None))  # passthrough keys count too
        values["tokenized_path"] = str(tokenized_root / cache_key(rendered, info, keys.llamafactory))
        text = template.render(**values)
        _check_rendered(yaml.safe_load(text), keys, problems)
        config_name = f"{stage_name}.yaml"
        files.append(RenderedFile(config_name, text))
        stages.append(RenderedStage(index, stage_name, config_name, output_dir))
        earlier_outputs.append(output_dir)
    problems.raise_if_any(f"{loaded.path}: cannot render for {target.describe()}")
    return Rendering(files, stages)
