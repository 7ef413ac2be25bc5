"""The CLI through click's CliRunner, and the import-weight promise checked in a fresh interpreter."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lfw.cli import cli, main
from tests.conftest import REPO, minimal_recipe


def test_help_lists_every_command(runner):
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in ("render", "run", "lf", "recipes"):
        assert name in result.output


def test_every_listed_command_imports_and_has_help(runner):
    from lfw.cli import COMMANDS

    for name in COMMANDS:
        result = runner.invoke(cli, [name, "--help"]) if name != "lf" else None
        assert result is None or result.exit_code == 0, (name, result.output)


def test_render_prints_all_files(runner):
    result = runner.invoke(cli, ["render", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "4"])
    assert result.exit_code == 0, result.output
    for name in ("dataset_info.json", "ds_z3_offload.json", "1-sft.yaml"):
        assert f"# ==> {name} <==" in result.output
    assert "gradient_accumulation_steps: 4" in result.output


def test_render_writes_folder_but_never_overwrites(runner, tmp_path):
    out = tmp_path / "out"
    first = runner.invoke(cli, ["render", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "2", "-o", str(out)])
    assert first.exit_code == 0, first.output
    assert (out / "1-sft.yaml").is_file()
    before = (out / "1-sft.yaml").read_text()
    again = runner.invoke(cli, ["render", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "4", "-o", str(out)])
    assert again.exit_code == 2 and "is not empty" in again.output
    assert (out / "1-sft.yaml").read_text() == before


def test_import_never_overwrites_its_output(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text(json.dumps({"demo": {"file_name": "demo.json"}}))
    (tmp_path / "data" / "demo.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    lf_yaml = (
        "model_name_or_path: Qwen/Qwen3-0.6B\ntemplate: qwen3_nothink\nstage: sft\ndo_train: true\ndataset: demo\n"
    )
    (tmp_path / "lf.yaml").write_text(lf_yaml)
    out = tmp_path / "recipe.yml"
    first = runner.invoke(cli, ["import", "lf.yaml", "-o", str(out)])
    assert first.exit_code == 0 and "wrote" in first.output, first.output
    written = out.read_text()
    again = runner.invoke(cli, ["import", "lf.yaml", "-o", str(out)])
    assert again.exit_code == 2 and "exists: choose a new file name" in again.output
    assert out.read_text() == written


def test_user_error_is_one_message_without_traceback(runner, write_recipe):
    path = write_recipe(minimal_recipe(trainig={}))
    result = runner.invoke(cli, ["render", str(path)])
    assert result.exit_code == 2
    assert "trainig: unknown key" in result.output and "did you mean 'training'?" in result.output
    assert "Traceback" not in result.output


def test_main_returns_exit_codes():
    assert main(["--version"]) == 0
    assert main(["render", "does-not-exist.yml"]) == 2
    assert main(["no-such-command"]) == 2


def test_recipes_lists_bundled_and_fields(runner):
    listing = runner.invoke(cli, ["recipes"])
    assert "recipes/qwen3_14b_qlora_4gpu.yml" in listing.output and "recipes/tiny_cpu_demo.yml" in listing.output
    fields = runner.invoke(cli, ["recipes", "--fields"])
    assert "training.global_batch_size" in fields.output and "stages[].datasets[].format" in fields.output


def test_run_dry_run_creates_nothing(runner, write_recipe, tmp_path, tiny):
    recipe = minimal_recipe(model={"path": str(tiny["model"]), "template": "qwen3_nothink"})
    recipe["stages"][0]["datasets"][0]["path"] = str(tiny["sft_alpaca"])
    result = runner.invoke(cli, ["run", str(write_recipe(recipe)), "--dry-run", "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "dry run" in result.output and "train" in result.output
    assert not (tmp_path / "r" / "t").exists() or not any((tmp_path / "r" / "t").iterdir())


def test_run_refuses_missing_data_and_model(runner, write_recipe, tmp_path):
    recipe = minimal_recipe(model={"path": "./no-model", "template": "qwen3_nothink"})
    result = runner.invoke(cli, ["run", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "model folder" in result.output and "data.json does not exist" in result.output


@pytest.fixture
def fake_llamafactory(tmp_path, monkeypatch) -> Path:
    """A stand-in llamafactory-cli that records its arguments and environment (the real one runs in e2e)."""
    record = tmp_path / "called.json"
    exe = tmp_path / "llamafactory-cli"
    exe.write_text(
        textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        json.dump({{"argv": sys.argv[1:], "torchrun": os.environ.get("FORCE_TORCHRUN")}}, open({str(record)!r}, "w"))
        sys.exit(3 if "fail" in sys.argv else 0)
    """)
    )
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("LFW_LLAMAFACTORY_CLI", str(exe))
    return record


def test_lf_passes_every_argument_untouched(runner, fake_llamafactory):
    result = runner.invoke(cli, ["lf", "train", "--help", "x.yaml", "--flag=1"])
    assert result.exit_code == 0
    assert json.loads(fake_llamafactory.read_text())["argv"] == ["train", "--help", "x.yaml", "--flag=1"]
    assert runner.invoke(cli, ["lf", "fail"]).exit_code == 3  # exit code propagated


LIGHT_CHECK = """
import sys
from lfw.cli import main
code = main({argv!r})
heavy = sorted(m for m in ("torch", "transformers", "llamafactory", "vllm", "deepspeed") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


@pytest.mark.parametrize(
    "argv", [["--help"], ["render", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "4"], ["recipes"]]
)
def test_fast_commands_import_no_heavy_modules(argv):
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_CHECK.format(argv=argv)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY=", proc.stdout[-500:]
