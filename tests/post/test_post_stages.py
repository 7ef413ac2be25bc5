"""Steps after training in a recipe (export, eval, report): schema, wiring, dry run, and a real CPU pipeline
with a resume that redoes only what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lfw.cli import main
from lfw.infra.errors import UserError
from lfw.launch.pipeline import plan_steps
from lfw.recipe.loader import load_recipe
from tests.conftest import REPO, minimal_recipe, tiny_recipe

TWO_STAGES = [
    {"stage": "sft", "datasets": [{"path": "data.json", "format": "alpaca"}]},
    {"stage": "dpo", "datasets": [{"path": "pairs.json", "format": "preference"}]},
]
BENCH = {"benchmarks": [{"path": "bench.json", "kind": "alpaca", "name": "syn"}]}


def _load(write_recipe, **blocks):
    return load_recipe(str(write_recipe(minimal_recipe(stages=TWO_STAGES, **blocks))))


def test_steps_are_wired_folder_to_folder(write_recipe, tmp_path):
    loaded = _load(
        write_recipe, export={"stages": ["sft", "2"]}, eval={**BENCH, "backend": "hf", "limit": 3}, report=True
    )
    run = tmp_path / "run"
    steps = {s["name"]: s for s in plan_steps(loaded.recipe, run)}
    assert list(steps) == ["export-1-sft", "export-2-dpo", "eval-base", "eval-1-sft", "eval-2-dpo", "report"]
    export = steps["export-2-dpo"]["command"]
    assert export[export.index("export") :] == [
        "export", str(run), "--stage", "2-dpo", "-o", str(run / "export" / "2-dpo"), "--force"
    ]  # fmt: skip
    evaluated = steps["eval-1-sft"]
    assert f"1-sft={run / 'export' / '1-sft'}" in evaluated["command"]  # eval reads what export wrote
    assert evaluated["needs"] == ["export-1-sft"] and evaluated["result"] == str(
        run / "eval" / "1-sft" / "summary.json"
    )
    # The benchmark path is relative to the recipe file, as dataset paths are.
    assert f"syn=alpaca:{tmp_path / 'bench.json'}" in evaluated["command"]
    assert ["--limit", "3"] == evaluated["command"][evaluated["command"].index("--limit") :][:2]
    assert f"base={loaded.recipe.model.path}" in steps["eval-base"]["command"]
    report = steps["report"]["command"]
    assert report[report.index("report") + 1 :] == [
        str(run),
        *(str(run / "eval" / label) for label in ("base", "1-sft", "2-dpo")),
        "-o",
        str(run / "report"),
    ]
    assert set(steps["report"]["needs"]) == set(steps) - {"report"}


def test_defaults_export_the_last_stage_and_score_base_and_it(write_recipe, tmp_path):
    loaded = _load(write_recipe, export=True, eval=BENCH)
    assert [s["name"] for s in plan_steps(loaded.recipe, tmp_path)] == ["export-2-dpo", "eval-base", "eval-2-dpo"]
    assert "--backend" in (cmd := plan_steps(loaded.recipe, tmp_path)[1]["command"]) and "vllm" in cmd
    assert plan_steps(_load(write_recipe).recipe, tmp_path) == []


@pytest.mark.parametrize(
    ("blocks", "key", "text"),
    [
        ({"export": {"stages": ["kto"]}}, "export", "no stage 'kto'"),
        ({"export": True, "eval": {**BENCH, "models": ["sft"]}}, "eval", "add the stage to export.stages"),
        ({"export": True, "eval": BENCH, "report": {"baseline": "1-sft"}}, "report", "not an evaluated model"),
        ({"eval": {"benchmarks": []}}, "eval.benchmarks", "at least 1"),
        ({"eval": {**BENCH, "backend": "tgi"}}, "eval.backend", "vllm"),
        ({"export": {"stage": ["sft"]}}, "export.stage", "did you mean 'stages'"),
    ],
)
def test_step_blocks_are_checked_at_load(write_recipe, blocks, key, text):
    with pytest.raises(UserError) as err:
        _load(write_recipe, **blocks)
    message = str(err.value)
    assert key in message and text in message


def test_dry_run_lists_the_steps(tiny, write_recipe, capsys, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(Path(tiny["sft_alpaca"]).read_text())
    recipe = tiny_recipe(tiny, export=True, eval={"benchmarks": [{"path": str(bench)}], "backend": "hf"}, report=True)
    assert main(["run", str(write_recipe(recipe)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for name in ("step export-1-sft:", "step eval-base:", "step eval-1-sft:", "step report:"):
        assert name in out
    assert not (tmp_path / "runs").exists()


def test_a_missing_benchmark_fails_before_training(tiny, write_recipe, tmp_path, capsys):
    recipe = tiny_recipe(tiny, eval={"benchmarks": [{"path": "nope.json"}], "backend": "hf"})
    recipe["output_dir"] = str(tmp_path / "runs")
    assert main(["run", str(write_recipe(recipe))]) != 0
    assert "nope.json" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # no run directory, no training


def test_demo_recipe_runs_the_whole_pipeline():
    recipe = load_recipe(str(REPO / "recipes" / "tiny_cpu_demo.yml")).recipe
    names = [s["name"] for s in plan_steps(recipe, Path("/r"))]
    assert names == ["export-1-sft", "export-2-dpo", "eval-base", "eval-1-sft", "eval-2-dpo", "report"]


# ------------------------------------------------------------------------------ the real thing, on CPU


@pytest.mark.slow
def test_sft_dpo_export_eval_report_then_resume_redoes_only_the_missing_eval(
    tiny, write_recipe, tmp_path, monkeypatch, offline_env
):
    for key in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN", "NPROC_PER_NODE"):
        monkeypatch.delenv(key, raising=False)  # a single-process CPU run, whatever the shell has set
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(json.loads(Path(tiny["sft_alpaca"]).read_text())[:3]))
    recipe = tiny_recipe(
        tiny,
        training={**tiny_recipe(tiny)["training"], "max_steps": 3},
        stages=[
            {"stage": "sft", "datasets": [{"path": str(tiny["sft_alpaca"]), "format": "alpaca"}]},
            {"stage": "dpo", "pref_beta": 0.1, "datasets": [{"path": str(tiny["dpo_pairs"]), "format": "preference"}]},
        ],
        export={"stages": ["sft", "dpo"]},
        eval={
            "benchmarks": [{"path": "bench.json", "kind": "alpaca", "name": "syn"}],
            "backend": "hf",
            "limit": 2,
            "max_new_tokens": 4,
        },
        report=True,
        output_dir=str(tmp_path / "runs"),
    )
    path = write_recipe(recipe)
    assert main(["run", str(path)]) == 0
    (run,) = (tmp_path / "runs" / "e2e").iterdir()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "ok" and [s["status"] for s in manifest["stages"]] == ["ok", "ok"]
    steps = {s["name"]: s for s in manifest["steps"]}
    assert list(steps) == ["export-1-sft", "export-2-dpo", "eval-base", "eval-1-sft", "eval-2-dpo", "report"]
    assert all(s["status"] == "ok" and s["seconds"] > 0 and s["finished"] for s in steps.values())
    for stage in ("1-sft", "2-dpo"):
        lineage = json.loads((run / "export" / stage / "lineage.json").read_text())
        assert lineage["run"]["stage"] == stage and lineage["verify"]["loads"]
    dpo_adapters = json.loads((run / "export" / "2-dpo" / "lineage.json").read_text())["adapters"]
    assert [a["path"] for a in dpo_adapters] == [str(run / "1-sft"), str(run / "2-dpo")]
    for label in ("base", "1-sft", "2-dpo"):
        summary = json.loads((run / "eval" / label / "summary.json").read_text())
        assert summary["model"] == label and summary["benchmarks"]["syn"]["samples"] == 2
    assert json.loads((run / "eval" / "2-dpo" / "summary.json").read_text())["path"] == str(run / "export" / "2-dpo")
    report = (run / "report" / "report.md").read_text()
    assert all(label in report for label in ("base", "1-sft", "2-dpo")) and "## Training" in report

    # A finished run with every result in place has nothing to resume.
    assert main(["run", str(path), "--resume"]) != 0
    # Delete one model's eval result: the resume redoes that eval and the report that reads it, nothing else.
    (run / "eval" / "1-sft" / "summary.json").unlink()
    assert main(["run", str(path), "--resume"]) == 0
    after = json.loads((run / "manifest.json").read_text())
    assert after["status"] == "ok" and len(after["resumed"]) == 1
    assert after["stages"] == manifest["stages"]
    again = {s["name"]: s for s in after["steps"]}
    for name in ("export-1-sft", "export-2-dpo", "eval-base", "eval-2-dpo"):
        assert again[name] == steps[name], name
    for name in ("eval-1-sft", "report"):  # ran again: a new record, the first attempt's log kept aside
        assert again[name]["status"] == "ok" and again[name]["finished"] >= after["resumed"][0]
        assert len(list((run / "logs").glob(f"{name}.[0-9]*.log"))) == 1
    assert (run / "eval" / "1-sft" / "summary.json").is_file()
    assert not [p for name in ("1-sft", "2-dpo", "eval-base") for p in (run / "logs").glob(f"{name}.[0-9]*.log")]
