"""`lfw import`: an existing LLaMA-Factory train YAML in, an lfw recipe out (the migration path).

Every LLaMA-Factory key lands somewhere: in the recipe field that renders it back, in the `llamafactory`
passthrough block, or in a note saying why it was dropped (lfw renders it itself, or it is a secret).
Datasets are looked up in the YAML's dataset_info.json so the recipe names files and formats, not registry
entries.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lfw.errors import Problem, UserError
from lfw.lf_keys import SECRET_KEYS

# LLaMA-Factory key -> recipe path (dotted; "stage." means the single imported stage).
FIELD_MAP = {
    "model_name_or_path": "model.path",
    "template": "model.template",
    "trust_remote_code": "model.trust_remote_code",
    "flash_attn": "model.flash_attn",
    "lora_rank": "method.lora.rank",
    "lora_alpha": "method.lora.alpha",
    "lora_dropout": "method.lora.dropout",
    "lora_target": "method.lora.target",
    "quantization_bit": "method.quantization.bits",
    "quantization_method": "method.quantization.method",
    "freeze_trainable_layers": "method.freeze_trainable_layers",
    "pref_beta": "stage.pref_beta",
    "pref_loss": "stage.pref_loss",
    "cutoff_len": "training.cutoff_len",
    "max_samples": "training.max_samples",
    "packing": "training.packing",
    "preprocessing_num_workers": "training.preprocessing_workers",
    "per_device_train_batch_size": "training.micro_batch_size",
    "learning_rate": "training.learning_rate",
    "num_train_epochs": "training.epochs",
    "max_steps": "training.max_steps",
    "lr_scheduler_type": "training.lr_scheduler",
    "warmup_ratio": "training.warmup_ratio",
    "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm",
    "enable_liger_kernel": "training.liger_kernel",
    "val_size": "training.val_size",
    "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps",
    "eval_steps": "training.eval_steps",
    "seed": "training.seed",
    "plot_loss": "training.plot_loss",
    "swanlab_project": "tracking.swanlab.project",
    "swanlab_workspace": "tracking.swanlab.workspace",
    "swanlab_mode": "tracking.swanlab.mode",
    "swanlab_run_name": "tracking.swanlab.experiment",
}
# Keys lfw derives itself when rendering; importing them would only conflict.
DERIVED = {
    "do_train",
    "stage",
    "finetuning_type",
    "dataset",
    "dataset_dir",
    "output_dir",
    "deepspeed",
    "gradient_accumulation_steps",
    "bf16",
    "fp16",
    "use_cpu",
    "disable_gradient_checkpointing",
    "warmup_steps",
    "report_to",
    "use_swanlab",
    "overwrite_cache",
    "overwrite_output_dir",
    "ddp_timeout",
    "media_dir",
    "per_device_eval_batch_size",
    "eval_strategy",
    "ddp_find_unused_parameters",
    "upcast_layernorm",
    "adapter_name_or_path",
    "create_new_adapter",
    "resume_from_checkpoint",
}


@dataclass
class Imported:
    """The recipe as a plain mapping, plus what the user should know about the translation."""

    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def to_yaml(self, source: Path) -> str:
        header = [f"# Imported by `lfw import` from {source}", "# Review, then: lfw render THIS_FILE"]
        header += [f"# note: {note}" for note in self.notes]
        return "\n".join(header) + "\n" + yaml.safe_dump(self.recipe, sort_keys=False, allow_unicode=True)


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[last] = value


def dataset_format(entry: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The recipe format of a dataset_info.json entry, and the extra fields (tags, columns) it needs."""
    columns = dict(entry.get("columns") or {})
    tags = entry.get("tags") or {}
    sharegpt = entry.get("formatting") == "sharegpt"
    extra: dict[str, Any] = {}
    if "kto_tag" in columns:
        fmt = "kto"
    elif entry.get("ranking"):
        fmt = "preference_sharegpt" if sharegpt else "preference"
    elif columns.get("images") or columns.get("videos") or columns.get("audios"):
        fmt = "multimodal"
    elif sharegpt and columns.get("messages") == "messages" and tags.get("role_tag") == "role":
        fmt = "openai"
    elif sharegpt:
        fmt = "sharegpt"
        if tags.get("role_tag") == "role":
            extra["tags"] = "role_content"
    elif set(columns) == {"prompt"}:
        fmt = "text"
    else:
        fmt = "alpaca"
    defaults = {"alpaca": {"prompt": "instruction", "query": "input", "response": "output"}}.get(fmt, {})
    renamed = {k: v for k, v in columns.items() if defaults.get(k) != v}
    if renamed and fmt in ("alpaca", "sharegpt"):
        extra["columns"] = renamed
    return fmt, extra


def _datasets(names: str, dataset_dir: Path, where: str) -> list[dict[str, Any]]:
    info_path = dataset_dir / "dataset_info.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(
            [
                Problem(
                    str(info_path),
                    f"cannot read the dataset registry: {err}",
                    "pass --dataset-dir, the folder holding dataset_info.json",
                )
            ]
        ) from None
    specs = []
    for name in (n.strip() for n in str(names).split(",") if n.strip()):
        if name not in info:
            raise UserError(
                [
                    Problem(
                        f"{where} dataset",
                        f"{name!r} is not in {info_path}",
                        "register it there, or pass the right --dataset-dir",
                    )
                ]
            )
        entry = info[name]
        if "file_name" not in entry:
            raise UserError(
                [
                    Problem(
                        f"{info_path} {name}",
                        "only local files can be imported (no hub datasets)",
                        "download the data and register it with file_name",
                    )
                ]
            )
        fmt, extra = dataset_format(entry)
        path = Path(entry["file_name"])
        specs.append(
            {
                "path": str(path if path.is_absolute() else (dataset_dir / path).resolve()),
                "format": fmt,
                "name": name,
                **extra,
            }
        )
    return specs


def _deepspeed_kind(path_text: str, base: Path) -> str:
    path = Path(path_text) if Path(path_text).is_absolute() else base / path_text
    try:
        zero = json.loads(path.read_text(encoding="utf-8")).get("zero_optimization", {})
    except (OSError, json.JSONDecodeError) as err:
        raise UserError([Problem(str(path), f"cannot read the DeepSpeed config: {err}")]) from None
    stage = int(zero.get("stage", 0))
    offload = (
        zero.get("offload_param", {}).get("device") == "cpu" or zero.get("offload_optimizer", {}).get("device") == "cpu"
    )
    if stage == 3:
        return "z3_offload" if offload else "z3"
    return {0: "z0", 1: "z2", 2: "z2"}[stage]


def import_config(path: Path, gpus: int = 1, dataset_dir: Path | None = None) -> Imported:
    """Translate one LLaMA-Factory train YAML (as `llamafactory-cli train` reads it) into a recipe."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError([Problem(str(path), f"cannot read the YAML: {err}")]) from None
    if not isinstance(config, dict) or "model_name_or_path" not in config:
        raise UserError([Problem(str(path), "not a LLaMA-Factory train YAML (no model_name_or_path)")])
    base = path.parent
    recipe: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).strip("-._") or "imported"}
    stage: dict[str, Any] = {"stage": config.get("stage", "sft")}
    notes: list[str] = []
    passthrough: dict[str, Any] = {}
    for key, value in config.items():
        if key in SECRET_KEYS:
            notes.append(f"{key} dropped: secrets belong in the environment ({SECRET_KEYS[key]})")
        elif key in FIELD_MAP:
            target = FIELD_MAP[key]
            if target.startswith("stage."):
                stage[target.removeprefix("stage.")] = value
            else:
                _set(recipe, target, value)
        elif key not in DERIVED:
            passthrough[key] = value
    method = config.get("finetuning_type", "lora")
    _set(recipe, "method.type", "qlora" if method == "lora" and config.get("quantization_bit") else method)
    if config.get("deepspeed"):
        _set(recipe, "hardware.deepspeed", _deepspeed_kind(str(config["deepspeed"]), base))
    _set(recipe, "hardware.gpus", gpus)
    micro = int(config.get("per_device_train_batch_size", 1))
    accumulation = int(config.get("gradient_accumulation_steps", 1))
    _set(recipe, "training.global_batch_size", micro * accumulation * gpus)
    _set(recipe, "training.micro_batch_size", micro)
    if config.get("bf16") or config.get("fp16"):
        _set(recipe, "training.precision", "bf16" if config.get("bf16") else "fp16")
    if config.get("disable_gradient_checkpointing"):
        _set(recipe, "training.gradient_checkpointing", False)
    if "warmup_steps" in config:
        key = "warmup_ratio" if 0 < float(config["warmup_steps"]) < 1 else "warmup_steps"
        _set(recipe, f"training.{key}", config["warmup_steps"])
    if "max_steps" in config:
        recipe["training"].pop("epochs", None)
    if config.get("use_swanlab"):
        recipe.setdefault("tracking", {}).setdefault("swanlab", {}).setdefault("project", "llamafactory")
    else:
        recipe.pop("tracking", None)
    data_dir = dataset_dir or (base / str(config.get("dataset_dir", "data")))
    if not config.get("dataset"):
        raise UserError([Problem(f"{path} dataset", "no dataset to import", "add dataset: NAME")])
    stage["datasets"] = _datasets(config["dataset"], data_dir, str(path))
    recipe["stages"] = [stage]
    output_dir = Path(str(config.get("output_dir", "saves")))
    recipe["output_dir"] = str(output_dir.parent) if str(output_dir.parent) != "." else "runs"
    if passthrough:
        recipe["llamafactory"] = passthrough
    if config.get("adapter_name_or_path"):
        notes.append("adapter_name_or_path dropped: lfw chains stages itself; add the earlier stage to `stages`")
    notes.append(
        f"global_batch_size {micro * accumulation * gpus} = {micro} per GPU x {accumulation} accumulation "
        f"x {gpus} GPU(s); lfw keeps it constant when the GPU count changes"
    )
    ordered = {
        k: recipe[k]
        for k in ("name", "model", "method", "training", "stages", "hardware", "tracking", "output_dir", "llamafactory")
        if k in recipe
    }
    return Imported(ordered, notes)
