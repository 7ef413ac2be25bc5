"""The Python API (`lfw.load_recipe`, `render`, `plan`, `check_data`, `run`) gives what the commands give."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

import lfw
from lfw.cli import cli
from tests.conftest import REPO, minimal_recipe, tiny_recipe

BUNDLED = "recipes/qwen3_14b_qlora_4gpu.yml"


def test_import_lfw_and_render_stay_light(tmp_path):
    """`import lfw` loads no API module; rendering through the API imports no torch, transformers or LF."""
    code = textwrap.dedent(
        f"""
        import sys
        import lfw
        assert "lfw.api" not in sys.modules and "pydantic" not in sys.modules, sorted(sys.modules)
        lfw.render(lfw.load_recipe({BUNDLED!r}), {str(tmp_path / "out")!r}, gpus=4)
        heavy = {{"torch", "transformers", "llamafactory", "vllm"}} & set(sys.modules)
        assert not heavy, heavy
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "out" / "1-sft.yaml").is_file()


def test_render_writes_what_the_command_writes(tmp_path, runner):
    assert runner.invoke(cli, ["render", BUNDLED, "--gpus", "4", "-o", str(tmp_path / "cli")]).exit_code == 0
    rendering = lfw.render(BUNDLED, tmp_path / "api", gpus=4)
    names = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert names == sorted(f.name for f in rendering.files) == sorted(p.name for p in (tmp_path / "api").iterdir())
    for name in names:  # the same files, up to the folder they point into
        cli_text = (tmp_path / "cli" / name).read_text().replace(str(tmp_path / "cli"), "OUT")
        assert (tmp_path / "api" / name).read_text().replace(str(tmp_path / "api"), "OUT") == cli_text


def test_render_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(lfw.UserError, match="is not empty"):
        lfw.render(BUNDLED, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_load_recipe_overrides_and_errors(write_recipe):
    loaded = lfw.load_recipe(BUNDLED, ["training.max_steps=7"])
    assert loaded.recipe.training.max_steps == 7
    with pytest.raises(lfw.UserError) as err:
        lfw.load_recipe(write_recipe(minimal_recipe(trainig={})))
    assert "did you mean 'training'?" in err.value.render()


def test_plan_picks_the_micro_batch_the_command_prints(runner):
    memory = lfw.plan(BUNDLED, gpus=4, gpu_mem_gib=80)
    assert memory.world == 4 and len(memory.stages) == 1
    stage = memory.stages[0]
    printed = runner.invoke(cli, ["plan", BUNDLED, "--gpus", "4", "--gpu-mem", "80"])
    assert printed.exit_code == 0, printed.output
    assert f"micro batch {stage.estimate.inp.micro_batch}" in printed.output
    if stage.choice is not None and stage.choice.micro_batch is not None:
        assert stage.choice.micro_batch * stage.choice.grad_accum * memory.world == stage.global_batch
    # a smaller card never gets a larger micro batch
    small = lfw.plan(BUNDLED, gpus=4, gpu_mem_gib=24).stages[0]
    assert small.estimate.inp.micro_batch <= stage.estimate.inp.micro_batch


def test_check_data_reports_bad_rows_and_refuses_missing_paths(tmp_path):
    data = tmp_path / "sft.jsonl"
    rows = [{"instruction": "hi", "output": "hello"}, {"instruction": "", "output": ""}, {"instruction": 3}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = lfw.check_data(data, "alpaca")
    assert report.rows == 3 and report.format == "alpaca"
    assert report.error_count >= 1 and all(p.severity in ("error", "warning") for p in report.problems)
    with pytest.raises(lfw.UserError, match="missing"):
        lfw.check_data(tmp_path / "missing.jsonl", "alpaca")


def test_run_dry_run_launches_nothing(tiny, tmp_path, capsys):
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(tiny_recipe(tiny), sort_keys=False))
    assert lfw.run(path, dry_run=True, output_dir=tmp_path / "runs") == 0
    assert "# ==> 1-sft.yaml <==" in capsys.readouterr().out
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.yaml"))


def test_api_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    for name in ("load_recipe", "render", "plan", "check_data", "run"):
        assert re.search(rf"lfw\.{name}\(", readme), name
