"""`lfw export`: merge a run's LoRA adapters into the unquantized base, verify the result, record its lineage.

Why each step is there:

* The adapter stack is read from the stage configs the run actually trained with (not re-derived from the
  recipe): a stage with ``create_new_adapter`` trained a new adapter on top of the merged earlier ones, a stage
  without it kept training the last one (QLoRA chaining), so the stack to merge is exactly what training saw.
* The base is the unquantized model even after QLoRA: LLaMA-Factory refuses to merge into a 4/8-bit model and
  a merge into dequantized weights would not be the model that was trained.
* LLaMA-Factory does the merge (``llamafactory-cli export``), so the weights and the tokenizer fixes it made
  during training (eos, pad, template jinja) are the same as in training.
* A fresh process then loads the export with plain transformers, checks that the tokenizer's chat template
  renders the same prompt as the training template (finding the ``enable_thinking`` setting that does, or
  writing LLaMA-Factory's template when none does) and greedy-generates a few tokens. Serving with a
  different template or thinking mode than training is the classic "worse after merge" bug.
* ``lineage.json`` in the export says what went in (base, adapters in order, template, thinking mode,
  recipe hash, versions), so `lfw serve` and `lfw eval` can use the same template settings later.
* Exports are written into a new folder next to their destination and moved into place at the end: a
  failed or interrupted export never leaves a half model behind. An existing export is only replaced with
  ``--force``, and only when lineage.json shows lfw export wrote every file in it (never a run directory,
  a stage or adapter folder, or a user's folder; see lfw.infra.owned).

Run as ``python -m lfw.post.export.export verify ...`` this module is also the verification worker (torch is imported
only there, so importing it for the CLI stays cheap).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from lfw import __version__
from lfw.infra.errors import Problem, UserError
from lfw.infra.owned import files_in, new_dir_beside, sha256_file, swap_in, unlisted

LINEAGE = "lineage.json"
CONFIG_NAME = "lfw_export.yaml"
LOG_NAME = "export.log"
VERIFY_NAME = "verify.json"
LINEAGE_VERSION = 1
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


# --------------------------------------------------------------------------------------------- planning


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise UserError([Problem(str(path), f"cannot read: {err}")]) from err
    if not isinstance(data, dict):
        raise UserError([Problem(str(path), "not a LLaMA-Factory config (a YAML mapping)")])
    return data


def _split(value: Any) -> list[str]:
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
    loaded = _split(stage_config.get("adapter_name_or_path"))
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
    raise UserError(
        [
            Problem(
                f"--stage {wanted}",
                f"no such stage in {run_dir}",
                f"use one of: {', '.join(names)} (or its number)",
            )
        ]
    )


def _is_local(model: str) -> bool:
    return Path(model).expanduser().exists()


def _check_unquantized(base: str) -> None:
    """A pre-quantized checkpoint (GPTQ/AWQ/bnb) cannot take a LoRA merge: ask for its original."""
    config = Path(base).expanduser() / "config.json"
    if config.is_file():
        quantization = json.loads(config.read_text(encoding="utf-8")).get("quantization_config")
        if quantization:
            method = quantization.get("quant_method", "quantized")
            raise UserError(
                [
                    Problem(
                        base,
                        f"is a {method} checkpoint; LoRA adapters must be merged into unquantized weights",
                        "pass --base with the original (bf16/fp16) model the quantized one was made from",
                    )
                ]
            )


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
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        hint = (
            "this is a LoRA adapter folder: use lfw export --adapter " + str(run_dir)
            if (run_dir / "adapter_config.json").is_file()
            else "pass a run directory made by `lfw run`"
        )
        raise UserError([Problem(str(run_dir), "no manifest.json here", hint)])
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    stages = manifest.get("stages") or []
    if not stages:
        raise UserError([Problem(str(manifest_path), "the run has no stages")])
    index = _pick_stage(stages, stage, run_dir)
    for earlier in stages[: index + 1]:
        if earlier.get("status") != "ok":
            done = [s["name"] for s in stages if s.get("status") == "ok"]
            raise UserError(
                [
                    Problem(
                        str(run_dir),
                        f"stage {earlier['name']} is {earlier.get('status', 'unknown')}, not finished",
                        f"export a finished stage with --stage {done[-1]}"
                        if done
                        else "finish the run first (lfw run ... --resume)",
                    )
                ]
            )
    record = stages[index]
    config = _read_yaml(run_dir / record["config"])
    config.setdefault("output_dir", record["output_dir"])
    kind = str(config.get("finetuning_type", "lora"))
    trained_base = str(config["model_name_or_path"])
    trained_template = str(config.get("template") or "")
    notes = []
    if template and trained_template and template != trained_template:
        notes.append(
            f"template {template} replaces the training template {trained_template}: served prompts "
            "will differ from the ones the model was trained on"
        )
    quantization = None
    if config.get("quantization_bit"):
        quantization = {"bits": config["quantization_bit"], "method": config.get("quantization_method")}
    last = index == len(stages) - 1
    default_out = run_dir / ("export" if last else f"export-{record['name']}")
    common = {
        "template": template or trained_template,
        "enable_thinking": config.get("enable_thinking"),
        "trust_remote_code": bool(config.get("trust_remote_code")),
        "run_dir": run_dir,
        "stage": str(record["name"]),
        "recipe_path": run_dir / "recipe.yaml",
        "trained_quantization": quantization,
        "notes": notes,
    }
    if not common["template"]:
        raise UserError([Problem(str(run_dir / record["config"]), "names no template", "pass --template")])
    if kind in ("full", "freeze"):
        model = str(config["output_dir"])
        if base:
            raise UserError(
                [
                    Problem(
                        "--base",
                        f"a {kind} run's stage output is the whole model; there is no base to merge into",
                        "leave out --base",
                    )
                ]
            )
        return ExportPlan(
            kind=kind,
            base=model,
            adapters=[],
            export_dir=(output or Path(model)).resolve(),
            trained_base=trained_base,
            **common,
        )
    adapters = adapter_stack(config)
    chosen_base = base or trained_base
    if _is_local(chosen_base):
        chosen_base = str(Path(chosen_base).expanduser().resolve())
    return ExportPlan(
        kind="lora",
        base=chosen_base,
        adapters=adapters,
        export_dir=(output or default_out).expanduser().resolve(),
        trained_base=trained_base if chosen_base != trained_base else None,
        **common,
    )


def plan_from_adapters(
    adapters: list[str], *, base: str | None = None, template: str | None = None, output: Path | None = None
) -> ExportPlan:
    """Plan a merge of adapter folders given by hand (`--adapter`, repeatable, merged in the order given)."""
    paths = [Path(a).expanduser().resolve() for item in adapters for a in _split(item)]
    problems = []
    for path in paths:
        if not (path / "adapter_config.json").is_file():
            problems.append(Problem(f"--adapter {path}", "has no adapter_config.json (not a PEFT adapter)"))
    if problems:
        raise UserError(problems)
    adapter_config = json.loads((paths[0] / "adapter_config.json").read_text(encoding="utf-8"))
    # An adapter inside an lfw run has its stage config beside it: take the training template from there.
    stage_config = paths[-1].parent / f"{paths[-1].name}.yaml"
    trained = _read_yaml(stage_config) if stage_config.is_file() else {}
    chosen_base = base or adapter_config.get("base_model_name_or_path")
    if not chosen_base:
        raise UserError([Problem("--base", "the adapter does not name its base model", "pass --base MODEL")])
    if _is_local(chosen_base):
        chosen_base = str(Path(chosen_base).expanduser().resolve())
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
    notes = []
    if template and trained.get("template") and template != trained["template"]:
        notes.append(f"template {template} replaces the training template {trained['template']}")
    recipe = paths[-1].parent / "recipe.yaml"
    return ExportPlan(
        kind="lora",
        base=str(chosen_base),
        adapters=[str(p) for p in paths],
        template=str(chosen_template),
        export_dir=(output or paths[-1].parent / f"{paths[-1].name}-merged").expanduser().resolve(),
        enable_thinking=trained.get("enable_thinking"),
        trust_remote_code=bool(trained.get("trust_remote_code")),
        run_dir=recipe.parent if recipe.is_file() else None,
        recipe_path=recipe if recipe.is_file() else None,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------- rendering


def render_export_config(plan: ExportPlan, export_size: int = 5, export_device: str = "cpu") -> str:
    """The LLaMA-Factory export YAML for a LoRA plan (checked against the installed LLaMA-Factory's keys)."""
    from lfw.recipe.lf_keys import known_keys
    from lfw.rendering.render import _environment

    keys = known_keys()
    source = f"{plan.run_dir} stage {plan.stage}" if plan.stage else ", ".join(plan.adapters)
    text = (
        _environment()
        .get_template("export.yaml.j2")
        .render(
            lfw_version=__version__,
            lf_version=keys.llamafactory,
            source=source,
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
    )
    unknown = sorted(set(yaml.safe_load(text)) - keys.keys)
    if unknown:
        raise UserError(f"the export config uses keys LLaMA-Factory {keys.llamafactory} does not know: {unknown}")
    return text


# --------------------------------------------------------------------------------------------- running


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


def _subprocess_env(plan: ExportPlan) -> dict[str, str]:
    env = dict(os.environ)
    if _is_local(plan.base):  # a local base needs no hub; offline avoids minutes of network timeouts
        env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _run_logged(cmd: list[str], env: dict[str, str], log_path: Path, label: str, console: Console) -> None:
    """Run one subprocess in its own process group, output to log_path; failure is a UserError with the tail."""
    from lfw.launch.runner import _tail, run_stage

    result = run_stage(cmd, env, log_path, log_path.parent / ".no-trainer-log", label, console, stream=False)
    if result.returncode == 130:
        raise KeyboardInterrupt
    if result.returncode != 0:
        raise UserError(
            [
                Problem(
                    label,
                    f"failed (exit {result.returncode}); last lines of {log_path}:\n" + _tail(log_path, 25),
                )
            ]
        )


def _verify(model_dir: Path, plan: ExportPlan, console: Console, work: Path) -> dict[str, Any]:
    """Load the export in a fresh interpreter, check its chat template against training, generate."""
    out = work / VERIFY_NAME
    cmd = [
        sys.executable,
        "-m",
        "lfw.post.export.export",
        "verify",
        str(model_dir),
        "--template",
        plan.template,
        "--out",
        str(out),
    ]
    if plan.enable_thinking is not None:
        cmd += ["--enable-thinking", "true" if plan.enable_thinking else "false"]
    if plan.trust_remote_code:
        cmd.append("--trust-remote-code")
    _run_logged(cmd, _subprocess_env(plan), work / "verify.log", "verify", console)
    result = json.loads(out.read_text(encoding="utf-8"))
    out.unlink()
    return result


def _copy_model(source: Path, target: Path) -> None:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns(*_NOT_MODEL), symlinks=True, dirs_exist_ok=True)


def build_lineage(
    plan: ExportPlan,
    verify: dict[str, Any] | None,
    seconds: float,
    stripped: list[str],
    files: list[str] | None = None,
) -> dict[str, Any]:
    """What went into the export; `files` lists what lfw wrote into a folder of its own (None: in place)."""
    from lfw.launch.manifest import now, package_versions

    adapters = []
    for path in plan.adapters:
        weights = Path(path) / "adapter_model.safetensors"
        adapters.append({"path": path, "sha256": sha256_file(weights) if weights.is_file() else None})
    recipe_hash = sha256_file(plan.recipe_path) if plan.recipe_path and plan.recipe_path.is_file() else None
    template_check = (verify or {}).get("chat_template", {})
    return {
        "lineage_version": LINEAGE_VERSION,
        "created": now(),
        "model": str(plan.export_dir),
        "kind": "merged-lora" if plan.kind == "lora" else plan.kind,
        "base": plan.base,
        "trained_base": plan.trained_base,
        "trained_quantization": plan.trained_quantization,
        "adapters": adapters,
        "template": plan.template,
        "trust_remote_code": plan.trust_remote_code,
        "thinking": template_check.get("thinking"),  # None: not verified (it needs LLaMA-Factory's template)
        "enable_thinking": plan.enable_thinking,
        "chat_template_kwargs": template_check.get("kwargs", {}),
        "chat_template": {k: v for k, v in template_check.items() if k not in ("kwargs", "thinking")},
        "run": {
            "dir": str(plan.run_dir) if plan.run_dir else None,
            "stage": plan.stage,
            "recipe": str(plan.recipe_path) if plan.recipe_path else None,
            "recipe_sha256": recipe_hash,
        },
        "versions": {"python": sys.version.split()[0], **package_versions()},
        "export": {
            "seconds": round(seconds, 1),
            "config": CONFIG_NAME if plan.kind == "lora" else None,
            "stripped_local_files_only": stripped,
            "files": files,
        },
        "verify": {k: v for k, v in (verify or {}).items() if k != "chat_template"} if verify else None,
        "notes": plan.notes,
    }


def export(
    plan: ExportPlan,
    *,
    force: bool = False,
    verify: bool = True,
    console: Console | None = None,
    export_size: int = 5,
) -> dict[str, Any]:
    """Carry out a plan; returns the lineage written into the export directory."""
    console = console or Console()
    final = plan.export_dir
    if plan.in_place:
        if (final / LINEAGE).exists() and not force:
            raise UserError([Problem(str(final), "already exported (lineage.json exists)", "add --force to redo")])
    else:
        check_replaceable(final, force)
        inputs = [Path(p).expanduser().resolve() for p in (plan.base, *plan.adapters) if _is_local(p)]
        if any(final == p or final in p.parents for p in inputs):
            raise UserError(
                [Problem(str(final), "holds a model this export reads (its base or an adapter)", "choose another -o")]
            )
    if plan.kind == "lora":
        _check_unquantized(plan.base)
    for note in plan.notes:
        console.print(f"[yellow]warning:[/] {note}")
    started = time.monotonic()
    staging = final if plan.in_place else new_dir_beside(final, "partial")
    try:
        if plan.kind == "lora":
            config = staging / CONFIG_NAME
            config.write_text(render_export_config(plan, export_size=export_size), encoding="utf-8")
            from lfw.launch.runner import llamafactory_cli

            # The YAML names the final folder (so it can be rerun by hand); this run writes to the staging one.
            cmd = [llamafactory_cli(), "export", str(config), f"export_dir={staging}"]
            console.print(f"merging {len(plan.adapters)} adapter(s) into {plan.base}")
            _run_logged(cmd, _subprocess_env(plan), staging / LOG_NAME, "export", console)
        elif not plan.in_place:
            _copy_model(Path(plan.base), staging)
        stripped = strip_machine_keys(staging)
        checked = _verify(staging, plan, console, staging) if verify else None
        files = None if plan.in_place else sorted([*files_in(staging), LINEAGE])
        lineage = build_lineage(plan, checked, time.monotonic() - started, stripped, files)
        (staging / LINEAGE).write_text(json.dumps(lineage, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if not plan.in_place:
            swap_in(staging, final)
    except BaseException:
        if not plan.in_place and staging.exists():
            console.print(f"[yellow]export incomplete; its files are kept in {staging} for inspection[/]")
        raise
    return lineage


def check_replaceable(final: Path, force: bool) -> None:
    """An export goes to a new or empty folder; --force replaces only a folder that lfw export wrote.

    That folder's lineage.json lists every file the export put there: a run directory, a stage or adapter
    folder (exported in place or not), a folder holding anything else, or an export a user added files to
    is never replaced.
    """
    if not final.exists():
        return
    if not final.is_dir():
        raise UserError([Problem(str(final), "is a file, not an export folder", "choose a folder with -o")])
    if not any(final.iterdir()):
        return
    if not force:
        raise UserError(
            [
                Problem(
                    str(final),
                    "already exists; an export is never overwritten by default",
                    "add --force to replace it, or choose another folder with -o",
                )
            ]
        )
    fix = "choose a new folder with -o (it is created), or move the folder away yourself"
    if (final / "manifest.json").is_file():
        raise UserError([Problem(str(final), "is an lfw run directory; lfw export never replaces it", fix)])
    if any((final / name).is_file() for name in ("adapter_config.json", "trainer_state.json")):
        raise UserError([Problem(str(final), "holds a training stage's output; lfw export never replaces it", fix)])
    try:
        files = json.loads((final / LINEAGE).read_text(encoding="utf-8"))["export"]["files"]
    except (OSError, ValueError, KeyError, TypeError):
        files = None
    if not isinstance(files, list):
        raise UserError(
            [
                Problem(
                    str(final),
                    "is not a folder lfw export wrote (no lineage.json listing its files), so --force "
                    "does not replace it",
                    fix,
                )
            ]
        )
    extra = unlisted(final, files)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise UserError(
            [
                Problem(
                    str(final),
                    f"holds files lfw export did not write ({shown}), so --force does not replace it",
                    "move those files out of the export, or choose a new folder with -o",
                )
            ]
        )


# --------------------------------------------------------------------------------------------- worker

PROBES: list[tuple[str | None, str]] = [
    (None, "What is 2 + 3?"),
    ("You are a helpful assistant.", "Name the capital of France."),
]
VERIFY_PROMPT = "What is the capital of France?"
# Candidate chat-template arguments, tried in order: the template's own default first.
_KWARGS: list[dict[str, Any]] = [{}, {"enable_thinking": False}, {"enable_thinking": True}]


def _probe_template(
    model_dir: str, tokenizer: Any, template_name: str, enable_thinking: bool | None, trust_remote_code: bool
) -> dict[str, Any]:
    """Compare the tokenizer's chat template with LLaMA-Factory's training template on probe conversations.

    Returns the chat-template kwargs that reproduce the training prompts. When none does, LLaMA-Factory's
    template (as jinja) is written into the export, so every server renders the training prompt.
    """
    from llamafactory.data.template import ReasoningTemplate, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    lf_tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    args = (
        {"template": template_name}
        if enable_thinking is None
        else {"template": template_name, "enable_thinking": enable_thinking}
    )
    template = get_template_and_fix_tokenizer(lf_tokenizer, DataArguments(**args))
    thinking = isinstance(template, ReasoningTemplate) and template.enable_thinking is not False

    def decode(ids: list[int]) -> str:
        return lf_tokenizer.decode(ids, skip_special_tokens=False)

    expected = []
    for system, user in PROBES:
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": ""}]
        prompt_ids, _ = template.encode_oneturn(lf_tokenizer, messages, system=system)
        expected.append(decode(prompt_ids))

    def rendered(tok: Any, kwargs: dict[str, Any]) -> list[str] | None:
        texts = []
        for system, user in PROBES:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
            try:
                text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs)
            except Exception:  # a template without system support or no template at all: no match
                return None
            texts.append(decode(tok(text, add_special_tokens=False)["input_ids"]))
        return texts

    for kwargs in _KWARGS:
        if tokenizer.chat_template and rendered(tokenizer, kwargs) == expected:
            return {"matches_training": True, "source": "tokenizer", "kwargs": kwargs, "thinking": thinking}
    own = rendered(tokenizer, {}) if tokenizer.chat_template else None
    try:
        jinja = template._get_jinja_template(lf_tokenizer)
    except Exception as err:  # templates LLaMA-Factory cannot express as jinja
        return {
            "matches_training": False,
            "source": "tokenizer",
            "kwargs": {},
            "thinking": thinking,
            "problem": f"no template renders the training prompt and LLaMA-Factory's cannot be written: {err}",
            "expected_prompt": expected[0],
            "rendered_prompt": own[0] if own else None,
        }
    tokenizer.chat_template = jinja
    if rendered(tokenizer, {}) != expected:
        return {
            "matches_training": False,
            "source": "tokenizer",
            "kwargs": {},
            "thinking": thinking,
            "problem": "LLaMA-Factory's own jinja does not reproduce its training prompt",
            "expected_prompt": expected[0],
        }
    path = Path(model_dir)
    (path / "chat_template.jinja").write_text(jinja, encoding="utf-8")
    config_path = path / "tokenizer_config.json"
    if config_path.is_file():  # an inline template there would shadow the .jinja file in older loaders
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config.pop("chat_template", None) is not None:
            config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {
        "matches_training": True,
        "source": "llamafactory",
        "kwargs": {},
        "thinking": thinking,
        "replaced": "the tokenizer's chat template did not render the training prompt",
        "previous_prompt": own[0] if own else None,
    }


def verify_worker(
    model_dir: str,
    template_name: str,
    enable_thinking: bool | None,
    trust_remote_code: bool,
    max_new_tokens: int = 8,
) -> dict[str, Any]:
    """Load with plain transformers (as users and evaluators will), check the template, greedy-generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    template_check = _probe_template(model_dir, tokenizer, template_name, enable_thinking, trust_remote_code)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", trust_remote_code=trust_remote_code)
    model.to(device).eval()
    loaded = time.monotonic()
    messages = [{"role": "user", "content": VERIFY_PROMPT}]
    text = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False, **template_check["kwargs"]
    )
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
    with torch.no_grad():
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return {
        "loads": True,
        "device": device,
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "parameters": sum(p.numel() for p in model.parameters()),
        "prompt": VERIFY_PROMPT,
        "generated_tokens": int(new_tokens.shape[0]),
        "generated": tokenizer.decode(new_tokens, skip_special_tokens=False),
        "load_seconds": round(loaded - started, 1),
        "generate_seconds": round(time.monotonic() - loaded, 2),
        "chat_template": template_check,
    }


def _worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lfw.post.export.export", description="lfw export's verification worker"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("verify", help="load an exported model, check its chat template, generate")
    check.add_argument("model_dir")
    check.add_argument("--template", required=True)
    check.add_argument("--enable-thinking", choices=("true", "false"), default=None)
    check.add_argument("--trust-remote-code", action="store_true")
    check.add_argument("--max-new-tokens", type=int, default=8)
    check.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    thinking = None if args.enable_thinking is None else args.enable_thinking == "true"
    result = verify_worker(args.model_dir, args.template, thinking, args.trust_remote_code, args.max_new_tokens)
    Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: result[k] for k in ("loads", "generated_tokens", "generated")}, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main())
