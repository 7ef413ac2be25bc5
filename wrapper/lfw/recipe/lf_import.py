"""`lfw import`: an existing LLaMA-Factory train YAML in, an lfw recipe out (the migration path).

The YAML is read as `llamafactory-cli train` reads it: OmegaConf's YAML rules (`2e-5` is a number), relative
paths (`dataset_dir`, `deepspeed`, local models) against the working directory, LF's own defaults for keys
the YAML leaves out. Every key then lands somewhere: in the recipe field that renders it back, in the
`llamafactory` passthrough block, in a note saying why it was dropped (lfw renders it itself, or it is a
secret), or in a refusal naming the key and why lfw cannot honour it. Datasets are looked up in
dataset_info.json so the recipe names files and formats, not registry entries.
"""

from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lfw.infra.errors import Problem, ProblemCollector, UserError
from lfw.recipe.lf_keys import SECRET_KEYS, check_passthrough
from lfw.recipe.loader import UniqueKeyLoader

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
    "dataloader_num_workers": "training.dataloader_workers",
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
# LLaMA-Factory 0.9.5 / transformers defaults of mapped keys whose recipe default differs: a YAML that leaves
# them out trained with these (tests/recipe/test_import.py checks them against LF's own argument classes).
LF_DEFAULTS: dict[str, Any] = {
    "per_device_train_batch_size": 8,
    "learning_rate": 5e-5,
    "lr_scheduler_type": "linear",
    "logging_steps": 500,
    "plot_loss": False,
    "enable_liger_kernel": False,  # the recipe's auto defaults below would change the imported run
    "preprocessing_num_workers": None,
    "dataloader_num_workers": 0,
}
# Keys carried over through other recipe fields (method.type, stages, hardware, precision, ...).
CARRIED = {
    "do_train",
    "stage",
    "finetuning_type",
    "dataset",
    "dataset_dir",
    "media_dir",
    "deepspeed",
    "gradient_accumulation_steps",
    "bf16",
    "fp16",
    "use_cpu",
    "disable_gradient_checkpointing",
    "warmup_steps",
    "use_swanlab",
}
_ANY = object()  # lfw writes its own value whatever the YAML said: always worth a note
# Keys lfw sets itself: (the value lfw renders, so an equal one needs no note; why the YAML's is dropped).
DROPPED: dict[str, tuple[Any, str]] = {
    "output_dir": (_ANY, "runs go to a new <output_dir>/<name>/<timestamp> directory each (output_dir is its parent)"),
    "overwrite_output_dir": (_ANY, "lfw never overwrites: every run gets a new directory under output_dir"),
    "resume_from_checkpoint": (_ANY, "continue an interrupted run with `lfw run RECIPE --resume`"),
    "report_to": (
        "none",
        "lfw renders report_to: none (the loss is in trainer_log.jsonl and the loss plot); "
        "log to SwanLab with tracking.swanlab",
    ),
    "overwrite_cache": (False, "lfw tokenizes once into a tokenized_path named by what changes the tokens"),
    "tokenized_path": (_ANY, "lfw names the tokenized cache itself (<output_dir>/.tokenized/<hash>)"),
    "ddp_timeout": (180000000, "lfw renders ddp_timeout: 180000000 on multi-GPU runs"),
    "ddp_find_unused_parameters": (_ANY, "lfw renders false for multi-GPU LoRA without DeepSpeed"),
    "upcast_layernorm": (_ANY, "lfw renders true for a quantized base"),
    "per_device_eval_batch_size": (_ANY, "lfw evaluates with training.micro_batch_size"),
    "eval_strategy": (_ANY, "lfw evaluates every eval_steps when training.val_size holds data out"),
    "adapter_name_or_path": (_ANY, "lfw chains stages itself; add the earlier stage to `stages`"),
    "create_new_adapter": (_ANY, "lfw chains stages itself; add the earlier stage to `stages`"),
}
# Top-level recipe keys in the order an imported recipe lists them.
RECIPE_ORDER = ("name", "model", "method", "training", "stages", "hardware", "tracking", "output_dir", "llamafactory")
# Passthrough keys that name files: LF opens them relative to the working directory, lfw runs from anywhere.
PATH_KEYS = ("cache_dir", "logging_dir")
METHODS = ("lora", "full", "freeze")
STAGES = ("sft", "pt", "dpo", "kto", "rm")
DEEPSPEED_KINDS = ("z0", "z2", "z3", "z3_offload")
# ZeRO stage of a DeepSpeed config -> the lfw kind closest to it (3 and anything else: z3).
NEAREST_KIND: dict[Any, str] = {0: "z0", 1: "z2", 2: "z2"}
UNREADABLE = object()  # what `_Translation.read_json` returns for a file it could not read (after refusing it)
# What a dataset_info.json entry of a local file may carry; anything else has no recipe field.
_ENTRY_KEYS = {"file_name", "file_sha1", "formatting", "ranking", "columns", "tags"}
_HUB_KEYS = ("om_hub_url", "script_url", "cloud_file_name")
# A hub entry (LF prefers hf_hub_url unless USE_MODELSCOPE_HUB): the recipe's id/hub, with subset, split, folder.
_HUB_SOURCES = ("hf_hub_url", "ms_hub_url")
_HUB_ENTRY_KEYS = _ENTRY_KEYS - {"file_name", "file_sha1"} | set(_HUB_SOURCES) | {"subset", "split", "folder"}


class OmegaConfLoader(UniqueKeyLoader):
    """The YAML rules of OmegaConf.load, which `llamafactory-cli train` reads with: `2e-5` is a float (plain YAML
    1.1 reads a string) and dates stay strings; still plain data only, and a key given twice is an error."""


# YAML 1.2 floats: a dot or an exponent (1e-5 too, which YAML 1.1 reads as a string), and inf/nan.
_YAML12_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+)$"
    r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
)
OmegaConfLoader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))
OmegaConfLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in OmegaConfLoader.yaml_implicit_resolvers.items()
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


def read_lf_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """The YAML as LLaMA-Factory reads it, and the line of each top-level key."""
    try:
        loader = OmegaConfLoader(path.read_text(encoding="utf-8"))
        try:
            node = loader.get_single_node()
            config = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError([Problem(str(path), f"cannot read the YAML: {err}")]) from None
    if not isinstance(config, dict):
        raise UserError([Problem(str(path), "not a LLaMA-Factory train YAML (not a mapping)")])
    assert isinstance(node, yaml.MappingNode)
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    return config, lines


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


def _absolute(text: str, workdir: Path) -> Path:
    path = Path(text).expanduser()
    return path if path.is_absolute() else (workdir / path).resolve()


class _Translation:
    """One YAML's translation: the problems found (all reported at once) and the notes, each naming its key."""

    def __init__(self, path: Path, config: dict[str, Any], lines: dict[str, int], workdir: Path) -> None:
        self.path, self.config, self.lines, self.workdir = path, config, lines, workdir
        self.problems = ProblemCollector()
        self.notes: list[str] = []

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}:{line} {key}" if line else f"{self.path} {key}"

    def refuse(self, key: str, message: str, fix: str = "") -> None:
        self.problems.add(self.where(key), message, fix)

    def read_json(self, key: str, what: str, path: Path, fix: str) -> Any:
        """The JSON file that `key` names; UNREADABLE (and refused, naming `what`) when it cannot be read."""
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            self.refuse(key, f"cannot read {what} {path}: {err}", fix)
            return UNREADABLE

    def kinds(self) -> tuple[str, str]:
        """The stage and method of the YAML, each refused when no recipe stage or method matches."""
        config = self.config
        if config.get("do_train") is not True:
            self.refuse("do_train", "not a training YAML (do_train is not true)", "lfw imports train YAMLs only")
        stage_kind = config.get("stage", "sft")
        if stage_kind not in STAGES:
            self.refuse("stage", f"{stage_kind!r} has no recipe stage", f"lfw trains {', '.join(STAGES)}")
        method = config.get("finetuning_type", "lora")
        if method not in METHODS:
            self.refuse(
                "finetuning_type", f"{method!r} has no recipe method", "lfw trains lora, qlora, full and freeze"
            )
        if config.get("template") is None and stage_kind != "pt":
            self.refuse(
                "template",
                "missing: LLaMA-Factory would guess one from the tokenizer's chat template, which lfw cannot repeat",
                "name the chat template, e.g. template: qwen3_nothink",
            )
        return stage_kind, method

    def place_keys(self, values: dict[str, Any], recipe: dict[str, Any], stage: dict[str, Any]) -> dict[str, Any]:
        """Each key into its recipe field, a note, or the returned passthrough block (checked against LF's keys)."""
        passthrough: dict[str, Any] = {}
        for key, value in values.items():
            if key in SECRET_KEYS:
                self.notes.append(f"{key} dropped: secrets belong in the environment ({SECRET_KEYS[key]})")
            elif key in FIELD_MAP:
                target = FIELD_MAP[key]
                if target.startswith("stage."):
                    stage[target.removeprefix("stage.")] = value
                else:
                    _set(recipe, target, value)
            elif key in DROPPED:
                self._drop(key, value)
            elif key not in CARRIED:
                passthrough[key] = str(_absolute(str(value), self.workdir)) if key in PATH_KEYS and value else value
        for key, message, fix in check_passthrough(passthrough):
            if message.startswith("not an argument"):  # LF's train parser refuses it too, unless run as Megatron-core
                fix = "drop it: `llamafactory-cli train` refuses it as well, unless USE_MCA=1 selects LLaMA-Factory's "
                fix += "Megatron-core trainer (its parallelism keys), which lfw does not launch"
            self.refuse(key, message, fix)
        return passthrough

    def _drop(self, key: str, value: Any) -> None:
        """A key lfw renders itself: a note unless the YAML's value is the one lfw renders."""
        rendered, why = DROPPED[key]
        if rendered is _ANY or value != rendered:
            self.notes.append(f"{key}: {json.dumps(value)} dropped: {why}")

    def model_and_hardware(
        self, recipe: dict[str, Any], values: dict[str, Any], stage_kind: str, method: str, gpus: int
    ) -> None:
        """The model, method and hardware blocks from the keys the field map does not cover."""
        config = self.config
        if config.get("template") is None and stage_kind == "pt":
            _set(recipe, "model.template", "empty")
            self.notes.append(
                "template: none given, so `empty` (what LLaMA-Factory uses without one; pre-training formats no chat)"
            )
        model = str(values["model_name_or_path"])
        if (self.workdir / model).exists():  # LF (transformers) tries a local folder first, relative to where it ran
            _set(recipe, "model.path", str((self.workdir / model).resolve()))
        _set(recipe, "method.type", "qlora" if method == "lora" and config.get("quantization_bit") else method)
        if config.get("quantization_bit") and "upcast_layernorm" not in config:
            self.notes.append(
                "upcast_layernorm: lfw renders true for a quantized base (LLaMA-Factory's default is false)"
            )
        kind = self.deepspeed()
        if kind:
            _set(recipe, "hardware.deepspeed", kind)
        _set(recipe, "hardware.gpus", gpus)
        if config.get("use_cpu"):
            _set(recipe, "hardware.device", "cpu")

    def training(self, recipe: dict[str, Any], values: dict[str, Any], gpus: int) -> tuple[int, int]:
        """The training block's batch, precision and schedule, and the tracking block; (micro, accumulation)."""
        config = self.config
        micro = int(values["per_device_train_batch_size"])
        accumulation = int(config.get("gradient_accumulation_steps", 1))
        _set(recipe, "training.global_batch_size", micro * accumulation * gpus)
        _set(recipe, "training.micro_batch_size", micro)
        _set(recipe, "training.precision", "bf16" if config.get("bf16") else "fp16" if config.get("fp16") else "fp32")
        _set(recipe, "training.gradient_checkpointing", not config.get("disable_gradient_checkpointing"))
        if config.get("stage", "sft") == "sft" and not {"packing", "neat_packing"} & set(config):
            _set(recipe, "training.packing", False)  # LF's default for sft; the recipe's auto is neat packing
        if config.get("warmup_steps"):
            key = "warmup_ratio" if 0 < float(config["warmup_steps"]) < 1 else "warmup_steps"
            _set(recipe, f"training.{key}", config["warmup_steps"])
        recipe["training"].pop("epochs" if int(config.get("max_steps") or -1) > 0 else "max_steps", None)
        if config.get("use_swanlab"):
            recipe.setdefault("tracking", {}).setdefault("swanlab", {}).setdefault("project", "llamafactory")
        else:
            recipe.pop("tracking", None)
        return micro, accumulation

    def datasets(self, dataset_dir: Path | None) -> list[dict[str, Any]]:
        """Each dataset name as a recipe dataset (file, format, columns), looked up as LF looks it up."""
        names = self.config.get("dataset")
        names = [n.strip() for n in (names.split(",") if isinstance(names, str) else names or []) if str(n).strip()]
        if not names:
            self.refuse("dataset", "no dataset to import", "add dataset: NAME (a name in dataset_info.json)")
            return []
        dir_text = str(self.config.get("dataset_dir", "data"))
        if dataset_dir is None and dir_text == "ONLINE":  # LF: each name is a Hugging Face id of alpaca data
            return [{"id": name, "format": "alpaca"} for name in names]
        if dataset_dir is None and dir_text.startswith("REMOTE:"):
            self.refuse(
                "dataset_dir",
                f"{dir_text!r} reads datasets from the hub through a dataset_info.json on the hub",
                "download that dataset_info.json into a local folder and pass it as --dataset-dir",
            )
            return []
        folder = dataset_dir.resolve() if dataset_dir else _absolute(dir_text, self.workdir)
        info_path = folder / "dataset_info.json"
        fix = "run from the folder LLaMA-Factory ran in (dataset_dir is relative to it), or pass --dataset-dir"
        info = self.read_json("dataset_dir", "the dataset registry", info_path, fix)
        if info is UNREADABLE:
            return []
        media = self.config.get("media_dir")
        media_dir = _absolute(str(media), self.workdir) if media else folder  # LF: media_dir defaults to dataset_dir
        specs = [self._dataset(name, info, info_path, folder, media_dir) for name in names]
        return [spec for spec in specs if spec is not None]

    def _dataset(
        self, name: str, info: dict[str, Any], info_path: Path, folder: Path, media_dir: Path
    ) -> dict[str, Any] | None:
        entry = info.get(name)
        if not isinstance(entry, dict):
            self.refuse("dataset", f"{name!r} is not in {info_path}", "register it there, or pass --dataset-dir")
            return None
        hub = [key for key in _HUB_KEYS if key in entry]
        url_key = next((key for key in _HUB_SOURCES if key in entry), None)
        if hub or ("file_name" not in entry and url_key is None):
            source = f"{hub[0]} {entry[hub[0]]!r}" if hub else "no file_name"
            self.refuse(
                "dataset",
                f"{name!r} in {info_path} is neither a local file nor a Hugging Face/ModelScope dataset ({source})",
                "download the data and register it with file_name, or point the recipe at the file",
            )
            return None
        known = _HUB_ENTRY_KEYS if url_key else _ENTRY_KEYS | ({"split"} if entry.get("split") == "train" else set())
        extra_keys = sorted(set(entry) - known)
        if extra_keys:
            self.refuse(
                "dataset",
                f"{name!r} in {info_path} uses {', '.join(extra_keys)}, which a recipe dataset has no field for",
                "write that selection of the data into its own file and register that file",
            )
            return None
        fmt, extra = dataset_format(entry)
        if url_key:
            source_keys = {"id": entry[url_key]} | ({"hub": "ms"} if url_key == "ms_hub_url" else {})
            source_keys |= {key: entry[key] for key in ("subset", "split", "folder") if key in entry}
        else:
            source_keys = {"path": str(_absolute(str(entry["file_name"]), folder))}
        spec: dict[str, Any] = {**source_keys, "format": fmt, "name": name}
        if fmt == "multimodal":
            spec["media_dir"] = str(media_dir)
        return {**spec, **extra}

    def deepspeed(self) -> str | None:
        """The recipe's hardware.deepspeed for the YAML's config file, when it is one lfw renders identically."""
        from lfw.rendering.render import deepspeed_json

        text = self.config.get("deepspeed")
        if not text:
            return None
        path = _absolute(str(text), self.workdir)
        fix = "run from the folder LLaMA-Factory ran in (the path is relative to it)"
        theirs = self.read_json("deepspeed", "the DeepSpeed config", path, fix)
        if theirs is UNREADABLE:
            return None
        for kind in DEEPSPEED_KINDS:
            if json.loads(deepspeed_json(kind)) == theirs:
                return kind
        zero = theirs.get("zero_optimization") or {}
        nearest = NEAREST_KIND.get(zero.get("stage"), "z3")
        ours = json.loads(deepspeed_json(nearest))
        differ = sorted(
            {
                f"zero_optimization.{k}"
                for k in set(zero) | set(ours["zero_optimization"])
                if zero.get(k) != ours["zero_optimization"].get(k)
            }
            | {k for k in set(theirs) | set(ours) if k != "zero_optimization" and theirs.get(k) != ours.get(k)}
        )
        self.refuse(
            "deepspeed",
            f"{path} is not one of the DeepSpeed configs lfw renders ({', '.join(DEEPSPEED_KINDS)}); "
            f"closest {nearest} differs in {', '.join(differ)}",
            f"set hardware.deepspeed: {nearest} by hand if that difference does not matter to you",
        )
        return None


def _require_train_yaml(path: Path, config: dict[str, Any]) -> None:
    if "model_name_or_path" not in config:
        shape = "a LLaMA-Factory v1 config (USE_V1=1)" if "model" in config else "not a LLaMA-Factory train YAML"
        raise UserError(
            [Problem(str(path), f"{shape}: no model_name_or_path", "lfw imports `llamafactory-cli train` YAMLs")]
        )


def import_config(path: Path, gpus: int = 1, dataset_dir: Path | None = None, workdir: Path | None = None) -> Imported:
    """Translate one LLaMA-Factory train YAML (as `llamafactory-cli train` run in `workdir` reads it) to a recipe.

    workdir (default: the current directory) is where LLaMA-Factory ran: its relative paths resolve there.
    """
    config, lines = read_lf_yaml(path)
    _require_train_yaml(path, config)
    job = _Translation(path, config, lines, (workdir or Path.cwd()).resolve())
    stage_kind, method = job.kinds()
    values = {**config, **{key: value for key, value in LF_DEFAULTS.items() if key not in config}}
    recipe: dict[str, Any] = {"name": re.sub(r"[^A-Za-z0-9._-]", "-", path.stem).strip("-._") or "imported"}
    stage: dict[str, Any] = {"stage": stage_kind}
    passthrough = job.place_keys(values, recipe, stage)
    job.model_and_hardware(recipe, values, stage_kind, method, gpus)
    micro, accumulation = job.training(recipe, values, gpus)
    stage["datasets"] = job.datasets(dataset_dir)
    job.problems.raise_if_any(f"{path}: cannot import (LLaMA-Factory run from {job.workdir})")

    recipe["stages"] = [stage]
    output_dir = Path(str(config.get("output_dir", "saves")))
    recipe["output_dir"] = str(output_dir.parent) if str(output_dir.parent) != "." else "runs"
    if passthrough:
        recipe["llamafactory"] = passthrough
    job.notes.append(
        f"global_batch_size {micro * accumulation * gpus} = {micro} per GPU x {accumulation} accumulation "
        f"x {gpus} GPU(s); lfw keeps it constant when the GPU count changes"
    )
    ordered: dict[str, Any] = {key: recipe[key] for key in RECIPE_ORDER if key in recipe}
    return Imported(ordered, job.notes)


# recipe field -> the LLaMA-Factory key it came from, to name the YAML's key when the recipe check fails
_SOURCE_KEY = {target.replace("stage.", "stages[0]."): key for key, target in FIELD_MAP.items()}
_SOURCE_KEY.update(
    {"stages[0].datasets": "dataset", "method.type": "finetuning_type", "hardware.deepspeed": "deepspeed"}
)


def check_imported(imported: Imported, source: Path) -> str:
    """The recipe text, after the same checks as any recipe; problems name the LLaMA-Factory key they came from."""
    from lfw.recipe.loader import load_recipe

    text = imported.to_yaml(source)
    with tempfile.TemporaryDirectory() as tmp:
        check = Path(tmp) / "recipe.yml"
        check.write_text(text, encoding="utf-8")
        try:
            load_recipe(str(check))
        except UserError as err:
            problems = []
            for problem in err.problems:
                field_path = problem.where.split(" ", 1)[-1]
                key = next((k for f, k in _SOURCE_KEY.items() if field_path.startswith(f)), None)
                where = f"{source} {key} (recipe {field_path})" if key else f"{source} (recipe {field_path})"
                problems.append(Problem(where, problem.message, problem.fix))
            raise UserError(problems, f"{source}: the imported recipe has problems") from None
    return text
