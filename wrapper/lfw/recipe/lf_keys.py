"""What the installed LLaMA-Factory accepts, read without importing it into lfw's process.

LLaMA-Factory's parser (HfArgumentParser over its dataclasses, including transformers' TrainingArguments) keeps
values it does not understand: `quantization_method: bitsandbytes` parses and then quantizes nothing. So lfw
knows, per argument, its value types and its enum/Literal choices, and the chat-template registry with the media
each template's plugin handles; rendered files and passthrough keys are checked against that. The accepted keys
change with both versions (transformers 5.17 dropped `warmup_ratio`). Importing LF costs seconds and pulls in
torch, so the description is read once in a subprocess and cached per (llamafactory, transformers) version pair;
snapshots for known pairs ship with lfw.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from lfw.infra.errors import UserError
from lfw.infra.versions import installed_version

SNAPSHOT_FORMAT = 2  # bump when the dump's shape changes; older cache files are read again

# Keys never accepted in a recipe: secrets belong in the environment, not in files that get shared.
SECRET_KEYS = {
    "swanlab_api_key": "export SWANLAB_API_KEY instead",
    "hf_hub_token": "export HF_TOKEN instead",
    "ms_hub_token": "export MODELSCOPE_API_TOKEN instead",
    "om_hub_token": "export the token in the environment instead",
}

# Passthrough keys lfw never writes but cannot honour either.
REFUSED_PASSTHROUGH = {
    "eval_dataset": "lfw registers only the stages' datasets; hold out data with training.val_size",
    "pure_bf16": "lfw trains in mixed precision (training.precision); pure bf16 weights without AMP have no field",
    "ray_num_workers": "lfw does not run Ray (USE_RAY=1); set the GPU count with hardware.gpus or `--gpus N`",
    "ray_init_kwargs": "lfw does not run Ray (USE_RAY=1); lfw launches torchrun itself",
}

# Keys the train template writes, and the recipe field that sets each (keys missing here have none yet).
RECIPE_FIELDS = {
    "model_name_or_path": "model.path", "template": "model.template", "trust_remote_code": "model.trust_remote_code",
    "flash_attn": "model.flash_attn", "finetuning_type": "method.type", "quantization_bit": "method.quantization.bits",
    "quantization_method": "method.quantization.method", "lora_rank": "method.lora.rank",
    "lora_alpha": "method.lora.alpha", "lora_dropout": "method.lora.dropout", "lora_target": "method.lora.target",
    "freeze_trainable_layers": "method.freeze_trainable_layers", "stage": "stages[].stage",
    "pref_beta": "stages[].pref_beta", "pref_loss": "stages[].pref_loss", "media_dir": "stages[].datasets[].media_dir",
    "adapter_name_or_path": "stages (lfw chains each stage's adapters as LLaMA-Factory loads them)",
    "create_new_adapter": "stages (lfw chains each stage's adapters as LLaMA-Factory loads them)",
    "ref_model": "stages (lfw sets the reference each stage needs)",
    "ref_model_adapters": "stages (lfw sets the reference each stage needs)",
    "ref_model_quantization_bit": "stages (lfw sets the reference each stage needs)",
    "cutoff_len": "training.cutoff_len", "max_samples": "training.max_samples", "packing": "training.packing",
    "preprocessing_num_workers": "training.preprocessing_workers", "logging_steps": "training.logging_steps",
    "save_steps": "training.save_steps", "plot_loss": "training.plot_loss",
    "per_device_train_batch_size": "training.micro_batch_size",
    "per_device_eval_batch_size": "training.micro_batch_size",
    "gradient_accumulation_steps": "training.global_batch_size (accumulation is computed from it)",
    "learning_rate": "training.learning_rate", "max_steps": "training.max_steps",
    "num_train_epochs": "training.epochs", "lr_scheduler_type": "training.lr_scheduler",
    "warmup_steps": "training.warmup_steps or training.warmup_ratio",
    "warmup_ratio": "training.warmup_steps or training.warmup_ratio", "weight_decay": "training.weight_decay",
    "max_grad_norm": "training.max_grad_norm", "seed": "training.seed", "val_size": "training.val_size",
    "disable_gradient_checkpointing": "training.gradient_checkpointing",
    "enable_liger_kernel": "training.liger_kernel", "eval_steps": "training.eval_steps",
    "eval_strategy": "training.val_size (evaluation runs when data is held out)",
    "bf16": "training.precision", "fp16": "training.precision", "use_cpu": "hardware.device",
    "deepspeed": "hardware.deepspeed (lfw also sets FORCE_TORCHRUN for it)",
    "use_swanlab": "tracking.swanlab", "swanlab_project": "tracking.swanlab.project",
    "swanlab_run_name": "tracking.swanlab.experiment", "swanlab_mode": "tracking.swanlab.mode",
    "swanlab_workspace": "tracking.swanlab.workspace", "swanlab_logdir": "tracking.swanlab (logs go to RUN/swanlog)",
    "report_to": "tracking (tensorboard, wandb, mlflow)",
    "run_name": "tracking (lfw names each stage's run)",
    "dataset": "stages[].datasets (lfw registers them in dataset_info.json)",
    "dataset_dir": "stages[].datasets (lfw registers them in dataset_info.json)",
    "output_dir": "output_dir (each run gets its own directory under it)",
}  # fmt: skip

# LF's own corrections to the dump: fields that `split_arg` also takes as a YAML list, and a str field whose
# values only its help text names (an unknown fp8_backend silently becomes torchao).
LIST_FIELDS = frozenset(
    {"additional_target", "freeze_extra_modules", "freeze_trainable_modules", "oft_target", "galore_target",
     "apollo_target", "interleave_probs", "lora_target"}
)  # fmt: skip
HELP_CHOICES = {"fp8_backend": ("auto", "torchao", "te", "msamp")}

_DUMP_SCRIPT = """
import dataclasses, enum, json, sys, types, typing
import llamafactory, transformers
from llamafactory.hparams.parser import _TRAIN_ARGS
from llamafactory.data.template import TEMPLATES

def kinds(tp):
    # (types any value of which goes, the enum or Literal values) of an annotation
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        names, choices = set(), []
        for arg in typing.get_args(tp):
            if arg is type(None):
                names.add("null")
                continue
            n, c = kinds(arg)
            names.update(n)
            choices += c or []
        return sorted(names), choices or None
    if origin is typing.Literal:
        return [], list(typing.get_args(tp))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [], [m.value for m in tp]
    if origin in (list, tuple, set) or tp in (list, tuple, set):
        return ["list"], None
    if origin is dict or tp is dict:
        return ["dict"], None
    if tp in (bool, int, float, str):
        return [tp.__name__], None
    return ["any"], None

fields = {}
for cls in _TRAIN_ARGS:  # what `llamafactory-cli train` parses (not the eval-only arguments)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            types_, choices = kinds(hints.get(f.name, typing.Any))
            if not choices and f.metadata.get("choices"):  # argparse-style choices bind a plain str field
                choices, types_ = f.metadata["choices"], [t for t in types_ if t == "null"]
            fields[f.name] = {"types": types_, "choices": list(choices) if choices else None}
templates = {
    name: [m for m in ("image", "video", "audio") if getattr(template.mm_plugin, m + "_token", None)]
    for name, template in sorted(TEMPLATES.items())
}
versions = {"llamafactory": llamafactory.__version__, "transformers": transformers.__version__}
json.dump({"format": __FORMAT__, **versions, "fields": dict(sorted(fields.items())), "templates": templates},
          sys.stdout, indent=1)
""".replace("__FORMAT__", str(SNAPSHOT_FORMAT))


@dataclass(frozen=True)
class FieldType:
    """One LLaMA-Factory argument: the value types its annotation allows and, for enums and Literals, the values."""

    types: tuple[str, ...]  # any value of these goes: bool, int, float, str, list, dict, null, any
    choices: tuple[Any, ...] | None

    def problem(self, value: Any) -> str | None:
        """Why LLaMA-Factory would not take `value` as meant (None when it would)."""
        if "any" in self.types or (value is None and "null" in self.types):
            return None
        if (self.choices is not None and value in self.choices and type(value) in {type(c) for c in self.choices}) or (
            value is not None and _matches(value, self.types)
        ):
            return None
        if self.choices is not None:
            if len(self.choices) <= 12:
                return f"{value!r} is not one of LLaMA-Factory's values: {', '.join(map(str, self.choices))}"
            close = difflib.get_close_matches(str(value), [str(c) for c in self.choices], n=3, cutoff=0.4)
            hint = f" (closest: {', '.join(close)})" if close else ""
            return f"{value!r} is not one of LLaMA-Factory's {len(self.choices)} values{hint}"
        if value is None:
            return "cannot be null"
        return f"{value!r} is a {_type_name(value)}; LLaMA-Factory expects {' or '.join(_readable(self.types))}"


def _type_name(value: Any) -> str:
    return {bool: "boolean", int: "whole number", float: "number", str: "string", list: "list", dict: "mapping"}.get(
        type(value), type(value).__name__
    )


def _readable(types: tuple[str, ...]) -> list[str]:
    names = {"bool": "true/false", "int": "a whole number", "float": "a number", "str": "a string", "list": "a list",
             "dict": "a mapping"}  # fmt: skip
    return [names[t] for t in types if t in names]


def _matches(value: Any, types: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return "bool" in types
    if isinstance(value, int):
        return "int" in types or "float" in types
    if isinstance(value, float):
        return "float" in types
    if isinstance(value, str):
        return "str" in types
    if isinstance(value, list):
        return "list" in types
    if isinstance(value, dict):
        return "dict" in types
    return False


@dataclass(frozen=True)
class KeySet:
    """The installed LLaMA-Factory's arguments and templates, and where that came from (shown in headers)."""

    fields: dict[str, FieldType]
    templates: dict[str, tuple[str, ...]]  # template name -> media its plugin handles (image, video, audio)
    llamafactory: str
    transformers: str
    source: str

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(self.fields)

    def __contains__(self, key: object) -> bool:
        return key in self.fields

    def value_problem(self, key: str, value: Any) -> str | None:
        """Why `key: value` would not do what it says in LLaMA-Factory (unknown key, wrong type, not an enum value)."""
        if key not in self.fields:
            return f"not an argument of LLaMA-Factory {self.llamafactory}"
        return self.fields[key].problem(value)

    def template_problem(self, name: str) -> tuple[str, str] | None:
        """(message, fix) when `name` is not a chat template of the installed LLaMA-Factory."""
        if name in self.templates:
            return None
        close = difflib.get_close_matches(name, sorted(self.templates), n=3)
        fix = f"did you mean {' or '.join(repr(c) for c in close)}?" if close else "see LLaMA-Factory's template list"
        return f"{name!r} is not a template of LLaMA-Factory {self.llamafactory}", fix


def cache_dir() -> Path:
    root = os.environ.get("LFW_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lfw"
    return Path(root)


def _snapshot_name(lf_version: str, tf_version: str) -> str:
    return f"llamafactory-{lf_version}+transformers-{tf_version}.json"


def _bundled_dir() -> Path:
    return Path(str(resources.files("lfw") / "assets" / "lf_keys"))


def _parse(data: dict, source: str) -> KeySet:
    fields = {}
    for name, spec in data["fields"].items():
        types = tuple(spec["types"]) + (("list",) if name in LIST_FIELDS else ())
        choices = tuple(spec["choices"]) if spec["choices"] is not None else None
        if name in HELP_CHOICES:
            types, choices = tuple(t for t in types if t == "null"), HELP_CHOICES[name]
        fields[name] = FieldType(types, choices)
    templates = {name: tuple(media) for name, media in data["templates"].items()}
    return KeySet(fields, templates, data["llamafactory"], data["transformers"], source)


def _read(path: Path, source: str) -> KeySet | None:
    data = json.loads(path.read_text())
    return _parse(data, source) if data.get("format") == SNAPSHOT_FORMAT else None


def dump_installed_keys(python: str = sys.executable) -> dict:
    """Ask an interpreter with LLaMA-Factory installed to describe its arguments (seconds: imports torch)."""
    proc = subprocess.run([python, "-c", _DUMP_SCRIPT], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"could not read LLaMA-Factory's arguments with {python}: {tail[0]}")
    return json.loads(proc.stdout)


_CACHE: dict[tuple, KeySet] = {}


def known_keys() -> KeySet:
    """The installed LLaMA-Factory's description; a bundled snapshot when it is not installed here."""
    lf_version, tf_version = installed_version("llamafactory"), installed_version("transformers")
    memo = (lf_version, tf_version)
    if memo in _CACHE:
        return _CACHE[memo]
    result = None
    if lf_version is None or tf_version is None or find_spec("llamafactory") is None:
        newest = sorted(_bundled_dir().glob("*.json"))[-1]
        result = _read(newest, f"bundled snapshot {newest.stem} (LLaMA-Factory is not installed here)")
    else:
        name = _snapshot_name(lf_version, tf_version)
        bundled, cached = _bundled_dir() / name, cache_dir() / "lf_keys" / name
        if bundled.is_file():
            result = _read(bundled, f"bundled snapshot {bundled.stem}")
        if result is None and cached.is_file():
            result = _read(cached, f"cache {cached}")
        if result is None:
            data = dump_installed_keys()
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(json.dumps(data, indent=1) + "\n")
            result = _parse(data, f"read from the installed LLaMA-Factory into {cached}")
    if result is None:
        raise UserError(f"lfw's bundled LLaMA-Factory snapshot has an old format; reinstall lfw ({_bundled_dir()})")
    _CACHE[memo] = result
    return result


def rendered_keys() -> frozenset[str]:
    """Every key lfw's train template can write (the `{{ key }}:` lines name theirs in RECIPE_FIELDS)."""
    text = (resources.files("lfw") / "assets" / "templates" / "train.yaml.j2").read_text()
    return frozenset(re.findall(r"^([a-z_0-9]+):", text, flags=re.MULTILINE)) | frozenset(RECIPE_FIELDS)


def check_passthrough(raw: dict) -> list[tuple[str, str, str]]:
    """(key, message, fix) for every passthrough key that is a secret, owned by lfw, unknown or badly valued."""
    found = []
    keys = known_keys() if raw else None
    owned = rendered_keys() if raw else frozenset()
    for key, value in raw.items():
        if key in SECRET_KEYS:
            found.append((key, "secrets are never written into recipes or rendered files", SECRET_KEYS[key]))
        elif key in REFUSED_PASSTHROUGH:
            found.append((key, "lfw cannot pass this key through", REFUSED_PASSTHROUGH[key]))
        elif key in owned:
            field = RECIPE_FIELDS.get(key)
            fix = f"set it with {field}" if field else "no recipe field sets it yet; lfw chose its value for you"
            found.append((key, "lfw renders this key itself", fix))
        elif keys is not None and key not in keys:
            close = difflib.get_close_matches(key, sorted(keys.keys), n=1)
            fix = f"did you mean {close[0]!r}?" if close else "see `lfw lf train --help` for valid keys"
            found.append((key, f"not an argument of LLaMA-Factory {keys.llamafactory}", fix))
        elif keys is not None and (problem := keys.value_problem(key, value)):
            found.append((key, problem, f"give {key} a value LLaMA-Factory {keys.llamafactory} understands"))
    return found
