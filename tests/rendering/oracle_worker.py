"""Behaviour oracle worker: what LLaMA-Factory itself does with rendered stage YAMLs (run by the .venv python).

Usage: python oracle_worker.py JOBS.json RESULTS.json. JOBS.json is a list of {"id": ..., "stages": [yaml paths]};
the stages of one variant run in order in one forked child (LF imported once in the parent; a fork per variant
keeps DeepSpeed's and accelerate's global state from leaking between variants). For each stage it records facts,
not verdicts: the parse outcome, enum-typed values outside their enum, whether the template is registered, the
model LF's loader builds (quantization, trainable parameters, adapters merged / resumed / new, the reference
model), the rows LF's aligner returns for each dataset file, and whether LF's full dataset pipeline tokenizes.
Before the next stage it saves what this stage would have produced (the freshly initialised adapter, or the full
model) to the stage's output_dir, so that a chained stage loads a real earlier result without training.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
import sys
import traceback
import types
import typing
from pathlib import Path
from typing import Any

import yaml

MAX_PARALLEL = 2  # CI has two cores
ALIGNED = ("_prompt", "_response", "_system", "_tools", "_images", "_videos", "_audios")


def _error(err: BaseException) -> str:
    """One line naming the error, plus the innermost frames (enough to see where LF raised it)."""
    frames = "".join(traceback.format_exception(err)[-3:])
    return f"{type(err).__name__}: {err}\n{frames[-1500:]}"


def _choices_in_type(tp: Any) -> tuple[list[Any], bool]:
    """Values an annotation admits when it is an Enum or Literal (through unions); (values, allows None)."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return [member.value for member in tp], False
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return [arg for arg in typing.get_args(tp) if arg is not None], None in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        values: list[Any] = []
        allows_none = False
        for arg in typing.get_args(tp):
            if arg is type(None):
                allows_none = True
                continue
            found, none = _choices_in_type(arg)
            values += found
            allows_none |= none
        return values, allows_none
    return [], False


def enum_fields(classes: list[type]) -> dict[str, tuple[list[Any], bool]]:
    """Every field of LF's argument dataclasses that holds one of a fixed set of values.

    Found generically: an Enum or Literal annotation (e.g. `quantization_method: QuantizationMethod`), a default
    that is an Enum member, or `choices` in the field's metadata (transformers' style).
    """
    found: dict[str, tuple[list[Any], bool]] = {}
    for cls in classes:
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # a forward reference that does not resolve: fall back to the raw annotations
            hints = {}
        for field in dataclasses.fields(cls):
            values, allows_none = _choices_in_type(hints.get(field.name, field.type))
            if isinstance(field.default, enum.Enum):
                values += [member.value for member in type(field.default)]
            if field.metadata.get("choices"):
                values += list(field.metadata["choices"])
            if field.default is None:
                allows_none = True
            if values:
                found[field.name] = (sorted(set(values), key=str), allows_none)
    return found


def enum_violations(config: dict[str, Any], fields: dict[str, tuple[list[Any], bool]]) -> list[dict[str, Any]]:
    bad = []
    for key, value in config.items():
        if key not in fields:
            continue
        values, allows_none = fields[key]
        if value is None and allows_none:
            continue
        if getattr(value, "value", value) not in values:
            bad.append({"key": key, "value": value, "allowed": values})
    return bad


class Recorder(logging.Handler):
    """Collects LF's log messages for one stage ("Merged 1 adapter(s).", "Quantizing model to 4 bit ...")."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_facts(model: Any, model_args: Any, log: list[str]) -> dict[str, Any]:
    """What LF built: quantized modules, trainable parameters, and the LoRA adapter being trained."""
    import bitsandbytes as bnb
    import torch

    modules = list(model.modules())
    bits = 4 if any(isinstance(m, bnb.nn.Linear4bit) for m in modules) else None
    bits = 8 if bits is None and any(isinstance(m, bnb.nn.Linear8bitLt) for m in modules) else bits
    params = dict(model.named_parameters())
    trainable = {name: p.numel() for name, p in params.items() if p.requires_grad}
    facts: dict[str, Any] = {
        "quant_bits": bits,
        "trainable_names": sorted(trainable),
        "frozen_names": sorted(name for name in params if name not in trainable),
        "trainable": sum(trainable.values()),
        "total": sum(p.numel() for p in params.values()),
        "merged": next((int(line.split()[1]) for line in log if line.startswith("Merged ")), 0),
        "quantize_log": [line for line in log if line.startswith("Quantizing model")],
        "adapter_log": [line for line in log if line.startswith(("Merged ", "Loaded adapter"))],
        "is_peft": hasattr(model, "peft_config") or hasattr(getattr(model, "pretrained_model", None), "peft_config"),
        "trained_adapter": None,
    }
    if facts["is_peft"]:
        # Which adapter holds the trainable LoRA weights: one loaded from disk (resumed) or a new one.
        live = {name.replace(".default", ""): p for name, p in params.items() if "lora_A" in name}
        facts["trained_adapter"] = "new"
        from safetensors.torch import load_file

        for path in model_args.adapter_name_or_path or []:
            saved = load_file(str(Path(path) / "adapter_model.safetensors"))
            common = [key for key in saved if key in live or f"pretrained_model.{key}" in live]
            if common and all(
                torch.equal(saved[key].float(), live.get(key, live.get(f"pretrained_model.{key}")).detach().float())
                for key in common
            ):
                facts["trained_adapter"] = path
    return facts


def ref_facts(ref: Any, policy: dict[str, Any], model_args: Any, finetuning_args: Any) -> dict[str, Any] | None:
    """The reference model as LF's DPO/KTO trainer would use it, as a lineage: model path + adapters applied."""
    if not finetuning_args.use_ref_model and finetuning_args.stage != "kto":
        return None
    adapters = list(model_args.adapter_name_or_path or [])
    if ref is None:
        # No separate model: trl runs the policy with its adapter disabled, i.e. the base plus merged adapters.
        return {
            "kind": "policy with adapters disabled" if policy["is_peft"] else "none",
            "lineage": [model_args.model_name_or_path, *adapters[: policy["merged"]]],
            "quant_bits": policy["quant_bits"],
        }
    import bitsandbytes as bnb

    ref_adapters = finetuning_args.ref_model_adapters or []
    if isinstance(ref_adapters, str):
        ref_adapters = ref_adapters.split(",")
    modules = list(ref.modules())
    return {
        "kind": "separate",
        "lineage": [finetuning_args.ref_model or model_args.model_name_or_path, *ref_adapters],
        "quant_bits": 4
        if any(isinstance(m, bnb.nn.Linear4bit) for m in modules)
        else (8 if any(isinstance(m, bnb.nn.Linear8bitLt) for m in modules) else None),
    }


def aligned_rows(model_args: Any, data_args: Any, training_args: Any, stage: str) -> dict[str, list[dict]]:
    """LF's loader + aligner for each dataset of the stage, keyed by the data file it read."""
    from llamafactory.data.loader import _get_merged_dataset
    from llamafactory.data.parser import get_dataset_list

    lf_stage = {"dpo": "rm", "rm": "rm"}.get(stage, stage)
    attrs = get_dataset_list(data_args.dataset, data_args.dataset_dir)
    loaded = _get_merged_dataset(data_args.dataset, model_args, data_args, training_args, lf_stage, return_dict=True)
    return {
        attr.dataset_name: [_jsonable({k: row[k] for k in ALIGNED}) for row in loaded[name]]
        for name, attr in zip(data_args.dataset, attrs, strict=True)
    }


def run_stage(path: str, fields: dict[str, tuple[list[Any], bool]], save: bool) -> dict[str, Any]:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.data.template import TEMPLATES
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_model, load_tokenizer
    from llamafactory.train.trainer_utils import create_ref_model

    config = yaml.safe_load(Path(path).read_text())
    facts: dict[str, Any] = {"config": path, "enum_violations": enum_violations(config, fields)}
    facts["template"] = {"name": config.get("template"), "registered": config.get("template") in TEMPLATES}
    if facts["template"]["registered"]:
        plugin = TEMPLATES[config["template"]].mm_plugin
        facts["template"]["media"] = {
            kind: getattr(plugin, f"{kind}_token", None) is not None for kind in ("image", "video", "audio")
        }
    try:
        model_args, data_args, training_args, finetuning_args, _ = get_train_args(dict(config))
    except BaseException as err:  # LF's parser raises ValueError, or SystemExit through HfArgumentParser
        facts["parse"] = _error(err)
        return facts
    facts["parse"] = "ok"
    from transformers.integrations import is_deepspeed_zero3_enabled

    facts["zero3"] = is_deepspeed_zero3_enabled()
    recorder = Recorder()
    logging.getLogger("llamafactory").addHandler(recorder)
    try:
        facts["rows"] = aligned_rows(model_args, data_args, training_args, finetuning_args.stage)
    except Exception as err:
        facts["rows_error"] = _error(err)
    tokenizer_module = load_tokenizer(model_args)
    try:
        template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
        lf_stage = {"dpo": "rm"}.get(finetuning_args.stage, finetuning_args.stage)
        dataset = get_dataset(template, model_args, data_args, training_args, lf_stage, **tokenizer_module)
        facts["tokenized"] = len(dataset["train_dataset"])
    except Exception as err:
        facts["tokenize_error"] = _error(err)
    try:
        recorder.lines.clear()
        model = load_model(
            tokenizer_module["tokenizer"],
            model_args,
            finetuning_args,
            is_trainable=True,
            add_valuehead=finetuning_args.stage == "rm",
        )
        facts["model"] = model_facts(model, model_args, recorder.lines)
        ref = create_ref_model(model_args, finetuning_args) if finetuning_args.stage in ("dpo", "kto") else None
        facts["reference"] = ref_facts(ref, facts["model"], model_args, finetuning_args)
        if save:
            # What this stage leaves for the next one, untrained: the adapter, or the whole model.
            target = getattr(model, "pretrained_model", model)
            target.save_pretrained(training_args.output_dir)
            tokenizer_module["tokenizer"].save_pretrained(training_args.output_dir)
    except BaseException as err:  # LF asserts on adapter chains it cannot build
        facts["model_error"] = _error(err)
    finally:
        facts["log_tail"] = recorder.lines[-30:]
        logging.getLogger("llamafactory").removeHandler(recorder)
    return facts


def run_variant(job: dict[str, Any], fields: dict[str, tuple[list[Any], bool]], out: Path) -> None:
    """One variant's stages in order; a stage whose model cannot be built ends the chain."""
    os.environ["MASTER_PORT"] = str(job["port"])
    results = []
    for index, path in enumerate(job["stages"]):
        facts = run_stage(path, fields, save=index + 1 < len(job["stages"]))
        results.append(facts)
        if facts["parse"] != "ok" or "model_error" in facts:
            break
    out.write_text(json.dumps({"id": job["id"], "stages": results}, default=str))


def main(jobs_path: str, results_path: str) -> int:
    import multiprocessing

    import torch
    from llamafactory.hparams import (
        DataArguments,
        FinetuningArguments,
        GeneratingArguments,
        ModelArguments,
        TrainingArguments,
    )

    torch.set_num_threads(1)
    fields = enum_fields([ModelArguments, DataArguments, TrainingArguments, FinetuningArguments, GeneratingArguments])
    jobs = json.loads(Path(jobs_path).read_text())
    outdir = Path(results_path).with_suffix(".parts")
    outdir.mkdir(exist_ok=True)
    context = multiprocessing.get_context("fork")
    pending = list(enumerate(jobs))
    running: list[tuple[Any, dict, Path]] = []
    results = {}
    while pending or running:
        while pending and len(running) < MAX_PARALLEL:
            index, job = pending.pop(0)
            part = outdir / f"{index}.json"
            proc = context.Process(target=run_variant, args=({**job, "port": 29600 + index}, fields, part))
            proc.start()
            running.append((proc, job, part))
        proc, job, part = running.pop(0)
        proc.join()
        if part.is_file():
            results[job["id"]] = json.loads(part.read_text())["stages"]
        else:
            results[job["id"]] = {"crashed": f"worker exit code {proc.exitcode}"}
    Path(results_path).write_text(json.dumps({"enum_fields": sorted(fields), "variants": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
