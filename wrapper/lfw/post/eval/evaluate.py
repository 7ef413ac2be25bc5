"""`lfw eval`: score models on local benchmarks; generation in a worker process, scoring here.

The split: the worker (``lfw.post.eval.worker``) runs in the vLLM environment (or this one, for the transformers
backend) and only turns prompts into text and log-probabilities; everything that decides a score — the
prompts, the answer extraction, math-verify, ROUGE, BLEU — runs here, in one place, identically for both
backends. That keeps the vLLM environment free of lfw's dependencies and this process free of torch.

Per model it writes ``OUT/<label>/``:

* ``samples.jsonl``: one line per question (benchmark, prompt, prediction, reference, per-sample scores);
* ``summary.json`` and ``summary.csv``: the metrics per benchmark, samples/s and tokens/s, backend, seed,
  dtype and versions, which `lfw report` reads;
* ``requests.jsonl``, ``predictions.jsonl``, ``worker.json``, ``worker.log``: what the worker was asked,
  what it answered and its log, for when a number looks wrong.

The same seed, model and benchmarks give the same samples and scores (greedy decoding, fixed order).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from lfw import __version__
from lfw.infra.errors import Problem, UserError
from lfw.infra.owned import unlisted
from lfw.infra.paths import looks_local
from lfw.infra.processes import TERMINATE_FIRST, run_logged, tail
from lfw.post.eval.benchmarks import Benchmark, Output, resolve, subset
from lfw.post.serve import chat_template_settings, read_lineage

SUMMARY = "summary.json"
SAMPLES = "samples.jsonl"
# Every file an eval writes into OUT/<label>/: a folder holding anything else is not lfw's to overwrite.
EVAL_FILES = (
    SUMMARY, SAMPLES, "summary.csv", "requests.jsonl", "predictions.jsonl", "worker.json", "worker.log"
)  # fmt: skip
PROGRESS = "lfw-progress"  # the worker's progress prefix (lfw.post.eval.worker.PROGRESS; not imported: stays light)


@dataclass
class EvalOptions:
    """Everything `lfw eval` needs besides the models and benchmarks; defaults match the CLI's."""

    out: Path = Path("eval_results")
    backend: str = "vllm"
    adapter: str | None = None
    limit: int | None = None
    shuffle: bool = False
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int | None = None
    dtype: str = "auto"
    max_model_len: int | None = None
    tensor_parallel_size: int = 1
    enforce_eager: bool = True
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # --thinking: over each model's lineage
    vllm_python: str | None = None
    bench_dir: str | None = None


@dataclass
class EvalModel:
    """One model to evaluate: its result folder's label, where it is, and the prompt settings it is served with."""

    label: str
    path: str
    chat_template_kwargs: dict[str, Any] = field(default_factory=dict)  # lineage.json's, as lfw serve uses
    notes: list[str] = field(default_factory=list)


def _label(text: str) -> str:
    """A folder-safe label."""
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-.") or "model"


def adapter_label(adapter: Path) -> str:
    """``<run name>-<stage>`` for a stage of an lfw run (runs/NAME/STAMP/1-sft), else the folder name."""
    adapter = adapter.resolve()
    manifest = adapter.parent / "manifest.json"
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text(encoding="utf-8"))["recipe"]["resolved"]["name"]
        except (OSError, ValueError, KeyError, TypeError):
            name = adapter.parent.parent.name
        return f"{name}-{adapter.name}"
    return adapter.name


def parse_model(spec: str, adapter: str | None) -> EvalModel:
    """``[LABEL=]PATH``; a run directory is refused with the two ways to evaluate it."""
    label, sep, path = spec.partition("=")
    if not sep or not label or "/" in label or Path(spec).exists():
        label, path = "", spec
    local = Path(path).expanduser()
    if (local / "manifest.json").is_file():
        stages = sorted(p.name for p in local.iterdir() if (p / "adapter_config.json").is_file())
        hint = f" or pass the base model with --adapter {local / stages[-1]}" if stages else ""
        raise UserError(f"{path} is an lfw run directory: merge it first with `lfw export {path}`{hint}")
    is_local = looks_local(path)
    if is_local and not (local / "config.json").is_file():
        raise UserError(f"model {path}: no config.json there (a model folder, an export, or a hub id)")
    if not label:
        label = local.name if is_local else path.replace("/", "--")
        if adapter:
            label += "+" + adapter_label(Path(adapter))
    if not is_local:
        return EvalModel(_label(label), path)
    kwargs, notes = chat_template_settings(read_lineage(local))
    return EvalModel(_label(label), str(local.resolve()), kwargs, notes)


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made distinct (each one a result folder): a repeat takes the first free -2, -3, ... that no
    other given name already is, so ['a', 'a', 'a-2'] becomes ['a', 'a-3', 'a-2']. Case-insensitive, as
    folders are on macOS and Windows."""
    given = {name.casefold() for name in names}
    used: set[str] = set()
    out = []
    for name in names:
        candidate, number = name, 1
        while candidate.casefold() in used or (number > 1 and candidate.casefold() in given):
            number += 1
            candidate = f"{name}-{number}"
        used.add(candidate.casefold())
        out.append(candidate)
    return out


def load_benchmarks(specs: Sequence[str], bench_dir: str | None) -> list[Benchmark]:
    """Every benchmark, loaded and checked before any model is, so a typo costs no model load."""
    benches = [resolve(spec, bench_dir) for spec in specs]
    for bench, name in zip(benches, unique_names([b.name for b in benches]), strict=True):
        bench.name = name
    return benches


def worker_python(options: EvalOptions) -> str:
    """The interpreter that runs the worker: this one for hf, the vLLM environment's for vllm."""
    if options.backend == "hf":
        return sys.executable
    from lfw.infra.vllm_env import vllm_python

    return vllm_python(options.vllm_python)


def _worker_env(backend: str) -> dict[str, str]:
    """The worker's environment. PYTHONPATH starts with this lfw, so the worker is the same code even if the
    vLLM environment holds an older lfw (or none at all)."""
    if backend == "vllm":
        from lfw.infra.vllm_env import vllm_subprocess_env

        env = vllm_subprocess_env()
    else:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false")}
    package_root = str(Path(__file__).resolve().parents[3])
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    return env


_LOG_NOISE = re.compile(r"\b(INFO|DEBUG|WARNING)\b \d\d-\d\d |^\s*warnings\.warn|resource_tracker")


def run_worker(cmd: list[str], env: dict[str, str], log_path: Path, console: Console, label: str) -> float:
    """Run the worker in its own process group, log everything, echo progress; return the wall seconds.

    On failure the error shows the end of the log without vLLM's info/shutdown chatter, so the real error shows.
    """

    def echo(line: str) -> None:
        if line.startswith(PROGRESS):
            console.print(f"  [dim]{label}:[/] {line[len(PROGRESS) :].strip()}", highlight=False)

    start = time.perf_counter()
    # The worker has nothing to save: SIGTERM, then SIGKILL (no SIGINT round).
    code = run_logged(cmd, env, log_path, on_line=echo, ladder=TERMINATE_FIRST)
    if code != 0:
        last = tail(log_path, 25, skip=_LOG_NOISE)
        raise UserError(f"generation worker for {label} failed (exit {code}); last lines of {log_path}:\n{last}")
    return time.perf_counter() - start


def build_requests(benches: Sequence[Benchmark], options: EvalOptions) -> list[tuple[Benchmark, Any, dict]]:
    """(benchmark, item, request) for every question, in a fixed order."""
    jobs = []
    for bench in benches:
        for index, item in enumerate(subset(bench.items, options.limit, options.seed, options.shuffle)):
            prompt = bench.prompt(item)
            request = {
                "id": f"{bench.name}#{index}",
                "group": bench.name,
                "messages": prompt.messages,
                "continuations": prompt.continuations,
                "max_tokens": options.max_new_tokens or bench.max_new_tokens,
            }
            jobs.append((bench, item, request))
    return jobs


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def _rate(count: float, seconds: float) -> float | None:
    return round(count / seconds, 3) if seconds > 0 else None


def worker_command(model: EvalModel, out: Path, options: EvalOptions) -> list[str]:
    """The worker's command line: requests in, predictions and stats out, all under `out`."""
    cmd = [worker_python(options), "-m", "lfw.post.eval.worker", "--backend", options.backend, "--model", model.path]
    cmd += ["--requests", str(out / "requests.jsonl"), "--output", str(out / "predictions.jsonl")]
    cmd += ["--stats", str(out / "worker.json"), "--seed", str(options.seed), "--dtype", options.dtype]
    cmd += ["--batch-size", str(options.batch_size), "--tensor-parallel-size", str(options.tensor_parallel_size)]
    cmd += ["--chat-template-kwargs", json.dumps(model.chat_template_kwargs)]
    if options.adapter:
        cmd += ["--adapter", str(Path(options.adapter).resolve())]
    if options.max_model_len:
        cmd += ["--max-model-len", str(options.max_model_len)]
    if options.enforce_eager:
        cmd.append("--enforce-eager")
    return cmd


Scored = dict[str, list[tuple[Any, Output, dict[str, float]]]]  # per benchmark: (item, output, scores)


def score_answers(
    benches: Sequence[Benchmark], jobs: Sequence[tuple[Benchmark, Any, dict]], predictions: dict[str, dict]
) -> tuple[list[dict[str, Any]], Scored]:
    """Score every answer here (never in the worker); returns the samples.jsonl rows and the scores per benchmark."""
    samples: list[dict[str, Any]] = []
    per_bench: Scored = {b.name: [] for b in benches}
    for bench, item, request in jobs:
        answer = predictions[request["id"]]
        output = Output(answer["prediction"] or "", answer.get("choice_logprobs"))
        scores = bench.score(item, output)
        per_bench[bench.name].append((item, output, scores))
        sample = {
            "benchmark": bench.name,
            "id": item.id,
            "prompt": answer["prompt"],
            "prediction": output.prediction,
            "reference": item.reference,
            "score": scores,
        }
        if item.choices:
            sample["choices"] = item.choices
            sample["choice_logprobs"] = output.choice_logprobs
        if answer.get("error"):
            sample["error"] = answer["error"]
        sample["completion_tokens"] = answer["completion_tokens"]
        sample["finish_reason"] = answer["finish_reason"]
        samples.append(sample)
    return samples, per_bench


def bench_result(
    bench: Benchmark, rows: list[tuple[Any, Output, dict[str, float]]], group: dict[str, Any]
) -> dict[str, Any]:
    """One benchmark's metrics and throughput (the worker's timings of its group)."""
    metrics = bench.aggregate([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])
    generate = group.get("generate_seconds", 0.0)
    tokens = group.get("completion_tokens", 0)
    return {
        "kind": bench.kind,
        "source": bench.source,
        "samples": len(rows),
        "primary": bench.primary,
        "score": metrics.get(bench.primary),
        "metrics": {k: round(v, 6) for k, v in metrics.items()},
        "samples_per_s": _rate(len(rows), generate + group.get("loglik_seconds", 0.0)),
        "tokens_per_s": _rate(tokens, generate),
        "generate_seconds": group.get("generate_seconds"),
        "loglik_seconds": group.get("loglik_seconds"),
        "completion_tokens": tokens,
        "prompt_tokens": group.get("prompt_tokens"),
    }


def build_summary(
    model: EvalModel, options: EvalOptions, results: dict[str, Any], stats: dict[str, Any], wall: float
) -> dict[str, Any]:
    """summary.json: every benchmark's result, overall throughput, and what produced them."""
    groups = [stats["groups"].get(name, {}) for name in results]
    generate = sum(g.get("generate_seconds", 0.0) for g in groups)
    seconds = sum(g.get("generate_seconds", 0.0) + g.get("loglik_seconds", 0.0) for g in groups)
    return {
        "model": model.label,
        "path": model.path,
        "adapter": str(Path(options.adapter).resolve()) if options.adapter else None,
        "backend": options.backend,
        "seed": options.seed,
        "limit": options.limit,
        "dtype": stats.get("dtype"),
        "chat_template": stats.get("chat_template"),
        "chat_template_kwargs": model.chat_template_kwargs,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "load_seconds": stats.get("load_seconds"),
        "wall_seconds": round(wall, 2),
        "samples_per_s": _rate(sum(r["samples"] for r in results.values()), seconds),
        "tokens_per_s": _rate(sum(g.get("completion_tokens", 0) for g in groups), generate),
        "benchmarks": results,
        "versions": {"lfw": __version__, **stats.get("versions", {})},
    }


def evaluate_model(
    model: EvalModel, benches: Sequence[Benchmark], options: EvalOptions, console: Console
) -> dict[str, Any]:
    """Generate with the worker, score every answer, write samples and summaries; return the summary."""
    out = options.out / model.label
    out.mkdir(parents=True, exist_ok=True)
    for stale in (SUMMARY, SAMPLES, "summary.csv"):
        (out / stale).unlink(missing_ok=True)  # a failed run must not leave an older result looking current
    jobs = build_requests(benches, options)
    _write_jsonl(out / "requests.jsonl", [request for _, _, request in jobs])
    console.print(f"[bold]{model.label}[/]: {len(jobs)} prompts, {options.backend} backend")
    cmd = worker_command(model, out, options)
    wall = run_worker(cmd, _worker_env(options.backend), out / "worker.log", console, model.label)
    stats = json.loads((out / "worker.json").read_text(encoding="utf-8"))
    predictions = {row["id"]: row for row in map(json.loads, (out / "predictions.jsonl").open(encoding="utf-8"))}
    samples, per_bench = score_answers(benches, jobs, predictions)
    _write_jsonl(out / SAMPLES, samples)
    results = {b.name: bench_result(b, per_bench[b.name], stats["groups"].get(b.name, {})) for b in benches}
    summary = build_summary(model, options, results, stats, wall)
    (out / SUMMARY).write_text(json.dumps(summary, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_summary_csv(out / "summary.csv", summary)
    return summary


def write_summary_csv(path: Path, summary: dict[str, Any]) -> None:
    """One row per benchmark and metric (long format: spreadsheets and pandas pivot it either way)."""
    columns = [
        "model",
        "benchmark",
        "kind",
        "metric",
        "value",
        "primary",
        "samples",
        "samples_per_s",
        "tokens_per_s",
        "backend",
        "seed",
        "dtype",
    ]
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        for name, bench in summary["benchmarks"].items():
            for metric, value in bench["metrics"].items():
                writer.writerow(
                    {
                        "model": summary["model"],
                        "benchmark": name,
                        "kind": bench["kind"],
                        "metric": metric,
                        "value": value,
                        "primary": metric == bench["primary"],
                        "samples": bench["samples"],
                        "samples_per_s": bench["samples_per_s"],
                        "tokens_per_s": bench["tokens_per_s"],
                        "backend": summary["backend"],
                        "seed": summary["seed"],
                        "dtype": summary["dtype"],
                    }
                )


def print_summaries(summaries: Sequence[dict[str, Any]], console: Console) -> None:
    """Model x benchmark x metric, headline metric first, throughput on its row."""
    table = Table(title="lfw eval")
    for column in ("model", "benchmark", "metric", "score", "samples/s", "tokens/s"):
        table.add_column(column, justify="right" if column in ("score", "samples/s", "tokens/s") else "left")
    for summary in summaries:
        for name, bench in summary["benchmarks"].items():
            metrics = sorted(bench["metrics"].items(), key=lambda kv: kv[0] != bench["primary"])
            for row, (metric, value) in enumerate(metrics):
                first = row == 0
                table.add_row(
                    summary["model"] if first else "",
                    name if first else "",
                    metric,
                    f"{value:.4f}" if first else f"[dim]{value:.4f}[/]",
                    f"{bench['samples_per_s'] or 0:.2f}" if first else "",
                    f"{bench['tokens_per_s'] or 0:.1f}" if first else "",
                )
    console.print(table)


def check_outputs_are_evals(out: Path, labels: Sequence[str]) -> None:
    """Each OUT/<label> is new, or an earlier eval's folder (re-run over): never a folder with other files."""
    problems = []
    for label in labels:
        folder = out / label
        if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
            problems.append(Problem(str(folder), "exists and is not a folder", "choose another -o or label"))
        elif folder.is_dir() and (others := unlisted(folder, EVAL_FILES)):
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            problems.append(
                Problem(str(folder), f"holds files lfw eval did not write ({shown})", "choose another -o or label")
            )
    if problems:
        raise UserError(problems, "lfw eval writes only into new folders or earlier eval results")


def resolve_models(model_specs: Sequence[str], options: EvalOptions) -> list[EvalModel]:
    """The models with distinct labels (the folders their results go to), for lfw's scorers and lm-eval alike."""
    models = [parse_model(spec, options.adapter) for spec in model_specs]
    for model, label in zip(models, unique_names([m.label for m in models]), strict=True):
        if label != model.label:
            model.notes.append(f"another model is labelled {model.label}: this one's results go to {label}")
        model.label = label
        # --thinking/--no-thinking win over lineage.json, as -- --default-chat-template-kwargs does in lfw serve.
        model.chat_template_kwargs = {**model.chat_template_kwargs, **options.chat_template_kwargs}
    return models


def evaluate(
    model_specs: Sequence[str], bench_specs: Sequence[str], options: EvalOptions, console: Console | None = None
) -> list[dict[str, Any]]:
    """Score each model on each benchmark; returns the summaries (also written under ``options.out``)."""
    console = console or Console()
    if not model_specs or not bench_specs:
        raise UserError("give at least one MODEL and one --bench")
    if options.adapter and not (Path(options.adapter) / "adapter_config.json").is_file():
        raise UserError(f"--adapter {options.adapter}: no adapter_config.json there (a PEFT/LoRA adapter folder)")
    models = resolve_models(model_specs, options)
    for model in models:
        for note in model.notes:
            console.print(f"[yellow]note:[/] {model.label}: {note}", highlight=False)
    benches = load_benchmarks(bench_specs, options.bench_dir)
    check_outputs_are_evals(options.out, [m.label for m in models])
    worker_python(options)  # a missing vLLM environment is reported before anything runs
    summaries = [evaluate_model(model, benches, options, console) for model in models]
    print_summaries(summaries, console)
    console.print(f"results in {options.out}/<model>/ (samples.jsonl, summary.json, summary.csv)")
    return summaries
