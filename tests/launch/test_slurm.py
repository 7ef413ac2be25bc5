"""`lfw slurm`: the sbatch script against golden files, `bash -n`, option checks, no overwrite, --submit."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from lfw.cli import cli
from tests.conftest import GOLDEN

SLURM_GOLDEN = GOLDEN / "slurm"
RECIPE = "recipes/qwen3_14b_qlora_4gpu.yml"  # bundled: referenced by handle, so the script is path-free

CASES = {
    "two_nodes_minimal": [RECIPE, "--nodes", "2", "--gpus-per-node", "4"],
    "four_nodes_all_options": [
        RECIPE,
        "--nodes",
        "4",
        "--gpus-per-node",
        "8",
        "--partition",
        "gpu,gpu-long",
        "--time",
        "2-00:00:00",
        "--account",
        "proj-42",
        "--cpus-per-task",
        "96",
        "--hf-home",
        "/shared/hf cache",
        "--nccl-socket-ifname",
        "ib0",
        "--setup",
        "module load cuda/12.4",
        "--setup",
        "source /shared/venv/bin/activate",
        "--set",
        "training.global_batch_size=64",
        "--set",
        "stages.0.datasets.0.path=/shared/data/it's.json",
        "--output-dir",
        "runs-shared",
    ],
}


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(runner, args: list[str]):
    return runner.invoke(cli, ["slurm", *args], catch_exceptions=False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_script_matches_golden_and_parses(case, runner, in_tmp, update_golden):
    result = write(runner, [*CASES[case], "--output", f"{case}.sbatch"])
    assert result.exit_code == 0, result.output
    script = in_tmp / f"{case}.sbatch"
    assert os.access(script, os.X_OK)
    assert (in_tmp / "slurm-logs").is_dir()  # Slurm does not create the --output folder itself
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace(str(in_tmp), "<TMP>")
    golden = SLURM_GOLDEN / f"{case}.sbatch"
    if update_golden:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"rerun with --update-golden if the change is intended: {golden}"


def test_node_command_survives_quoting(runner, in_tmp, monkeypatch):
    """What srun runs on node 3 gives lfw exactly the intended arguments, odd characters included."""
    assert write(runner, [*CASES["four_nodes_all_options"], "--output", "j.sbatch"]).exit_code == 0
    text = (in_tmp / "j.sbatch").read_text()
    node_part = text[text.index("    bash -c") :]  # the command srun starts on every node
    fake = in_tmp / "bin" / "lfw"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}",
        "SLURM_NNODES": "4",
        "SLURM_NODEID": "3",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "20042",
    }
    words = subprocess.run(
        ["bash", "-c", node_part], capture_output=True, text=True, env=env, check=True
    ).stdout.splitlines()
    assert words == [
        "run",
        RECIPE,
        "--stream",
        "--nnodes",
        "4",
        "--master-addr",
        "n1",
        "--master-port",
        "20042",
        "--gpus",
        "8",
        "--output-dir",
        str(in_tmp / "runs-shared"),
        "--set",
        "training.global_batch_size=64",
        "--set",
        "stages.0.datasets.0.path=/shared/data/it's.json",
        "--node-rank",
        "3",
    ]


def test_batch_that_does_not_divide_fails_before_writing(runner, in_tmp):
    result = write(runner, [RECIPE, "--nodes", "3", "--gpus-per-node", "4"])
    assert result.exit_code == 2
    assert "not divisible by micro_batch_size 2 x 12 processes (4 GPUs x 3 nodes)" in result.output
    assert "use global_batch_size 24 or 48" in result.output
    assert not list(in_tmp.glob("*.sbatch"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--time", "tomorrow"], "'tomorrow' is not a Slurm time limit"),
        (["--partition", "gpu; rm -rf ~"], "is not a Slurm name"),
        (["--account", "a b"], "is not a Slurm name"),
        (["--nccl-socket-ifname", "ib0 $(x)"], "is not an interface list"),
        (["--log-dir", "my logs"], "#SBATCH lines cannot carry"),
    ],
)
def test_bad_options_are_user_errors(runner, in_tmp, args, message):
    result = write(runner, [RECIPE, "--nodes", "2", "--gpus-per-node", "4", *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not list(in_tmp.glob("*.sbatch"))


@pytest.mark.parametrize("args", [["--nodes", "0", "--gpus-per-node", "4"], ["--gpus-per-node", "4"]])
def test_node_count_is_required_and_positive(runner, in_tmp, args):
    assert write(runner, [RECIPE, *args]).exit_code == 2


def test_never_overwrites_a_script(runner, in_tmp):
    existing = in_tmp / "job.sbatch"
    existing.write_text("# mine\n")
    result = write(runner, [RECIPE, "--nodes", "2", "--gpus-per-node", "4", "--output", "job.sbatch"])
    assert result.exit_code == 2 and "already exists" in result.output and "--output" in result.output
    assert existing.read_text() == "# mine\n"


def test_submit_without_sbatch_is_a_clear_error(runner, in_tmp, monkeypatch):
    monkeypatch.setenv("PATH", str(in_tmp))  # no sbatch here
    result = write(runner, [RECIPE, "--nodes", "2", "--gpus-per-node", "4", "--submit"])
    assert result.exit_code == 2 and "sbatch is not on PATH" in result.output
    assert not list(in_tmp.glob("*.sbatch"))


def test_submit_calls_sbatch(runner, in_tmp, monkeypatch):
    fake = in_tmp / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" > {in_tmp}/sbatch.args\necho "Submitted batch job 4242"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = write(runner, [RECIPE, "--nodes", "2", "--gpus-per-node", "4", "--submit"])
    assert result.exit_code == 0 and "Submitted batch job 4242" in result.output
    assert (in_tmp / "sbatch.args").read_text().strip() == str(in_tmp / "lfw-qwen3-14b-qlora-4gpu.sbatch")


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_shellcheck_is_clean(runner, in_tmp):
    assert write(runner, [*CASES["four_nodes_all_options"], "--output", "j.sbatch"]).exit_code == 0
    subprocess.run(["shellcheck", "-S", "warning", str(in_tmp / "j.sbatch")], check=True)
