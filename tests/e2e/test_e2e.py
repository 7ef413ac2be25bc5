"""End to end on CPU with the tiny model: real LLaMA-Factory training launched by `lfw run`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lfw.cli import main
from lfw.launch.runner import new_run_dir
from tests.conftest import assert_complete, default_sigint, losses, manifest, run_recipe, tiny_recipe


@pytest.mark.slow
def test_lora_sft_then_dpo(tiny, tmp_path, offline_env):
    recipe = tiny_recipe(tiny)
    recipe["stages"].append(
        {
            "stage": "dpo",
            "pref_beta": 0.1,
            "training": {"max_steps": 6, "learning_rate": 1e-3},
            "datasets": [{"path": str(tiny["dpo_pairs"]), "format": "preference"}],
        }
    )
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0 and run_dir is not None
    data = assert_complete(run_dir, ["1-sft", "2-dpo"])
    assert (run_dir / "1-sft" / "adapter_model.safetensors").is_file()
    assert (run_dir / "2-dpo" / "adapter_model.safetensors").is_file()
    sft = losses(run_dir, "1-sft")
    assert sft[-1] < sft[0], sft  # it learned something
    assert "FORCE_TORCHRUN" not in data["launch_env"]
    assert data["stages"][1]["command"][-1] == str(run_dir / "2-dpo.yaml")


@pytest.mark.slow
def test_full_sft(tiny, tmp_path, offline_env):
    code, run_dir = run_recipe(tiny_recipe(tiny, method={"type": "full"}), tmp_path)
    assert code == 0
    assert_complete(run_dir, ["1-sft"])
    assert (run_dir / "1-sft" / "model.safetensors").is_file()


@pytest.mark.slow
def test_two_process_torchrun(tiny, tmp_path, offline_env):
    """NPROC_PER_NODE=2 on CPU (gloo): proves the FORCE_TORCHRUN path for real."""
    recipe = tiny_recipe(tiny, hardware={"device": "cpu", "gpus": 2})
    recipe["training"]["max_steps"] = 6
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0
    data = assert_complete(run_dir, ["1-sft"])
    assert data["launch_env"]["FORCE_TORCHRUN"] == "1" and data["launch_env"]["NPROC_PER_NODE"] == "2"
    config = yaml.safe_load((run_dir / "1-sft.yaml").read_text())
    assert config["gradient_accumulation_steps"] == 1  # 8 = 4 per process x 2 processes x 1
    assert "world size: 2" in (run_dir / "logs" / "1-sft.log").read_text()


@pytest.mark.slow
def test_failed_stage_propagates_exit_code(tiny, tmp_path, offline_env):
    """A failure only LLaMA-Factory sees (lfw checks config.json, not the weights): corrupt weights."""
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny["model"], broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    recipe = tiny_recipe(tiny)
    recipe["model"]["path"] = str(broken)
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code not in (0, 2)
    data = manifest(run_dir)
    assert data["status"] == "failed" and data["stages"][0]["status"] == "failed"


def test_broken_data_is_refused_before_launch(tiny, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps([{"instruction": "hi", "output": "ok"}, {"instruction": "", "output": ""}, {"instruction": "x"}])
    )
    recipe = tiny_recipe(tiny)
    recipe["stages"][0]["datasets"][0]["path"] = str(bad)
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 2 and run_dir is None  # refused: no run directory, no launch


@pytest.mark.slow
def test_save_to_disk_folder_is_converted_and_trains(tiny, tmp_path, offline_env):
    """Seed 000: LLaMA-Factory does not read `save_to_disk` folders; lfw converts them into the run dir."""
    import datasets

    rows = json.loads(Path(tiny["sft_alpaca"]).read_text())
    folder = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(folder))
    recipe = tiny_recipe(tiny)
    recipe["training"]["max_steps"] = 4
    recipe["stages"][0]["datasets"][0]["path"] = str(folder)
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0
    assert_complete(run_dir, ["1-sft"])
    info = json.loads((run_dir / "dataset_info.json").read_text())
    assert info["saved"]["file_name"] == str(run_dir / "data" / "saved.jsonl")
    assert len((run_dir / "data" / "saved.jsonl").read_text().splitlines()) == len(rows)


@pytest.mark.slow
def test_resume_continues_from_last_checkpoint(tiny, tmp_path, offline_env):
    recipe = tiny_recipe(tiny)
    recipe["training"].update(max_steps=6, save_steps=3)
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0
    # Pretend the machine died after the step-3 checkpoint: drop the last one and mark the stage unfinished.
    data = manifest(run_dir)
    data["stages"][0]["status"], data["status"] = "failed", "failed"
    (run_dir / "manifest.json").write_text(json.dumps(data))
    shutil.rmtree(run_dir / "1-sft" / "checkpoint-6")
    code = main(["run", str(tmp_path / "recipe.yml"), "--output-dir", str(tmp_path / "runs"), "--resume"])
    assert code == 0
    data = assert_complete(run_dir, ["1-sft"])
    assert data["resumed"] and data["stages"][0]["command"][-1].endswith("1-sft.resume.yaml")
    assert "checkpoint-3" in (run_dir / "1-sft.resume.yaml").read_text()
    attempts = [p for p in (run_dir / "logs").glob("1-sft*.log") if not p.name.endswith(".tokenize.log")]
    assert len(attempts) == 2  # the first attempt's log is kept
    assert (run_dir / "1-sft" / "checkpoint-6").is_dir()
    assert main(["run", str(tmp_path / "recipe.yml"), "--output-dir", str(tmp_path / "runs"), "--resume"]) == 2


def test_run_dirs_never_clobber(tmp_path):
    first, second = new_run_dir(tmp_path, "x"), new_run_dir(tmp_path, "x")
    assert first != second and first.is_dir() and second.is_dir()


FAKE_TRAINER = """\
#!{python}
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open({pids!r}, "w").write(f"{{os.getpid()}} {{child.pid}}")
time.sleep(300)
"""


def alive(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for a PID 1 that may never reap it in containers)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_whole_process_tree(tmp_path, tiny, sig):
    """SIGINT (Ctrl-C) or SIGTERM (kill, a scheduler's cancel) to lfw stops llamafactory-cli and its workers
    (a stand-in tree here; the real runs are above)."""
    pids_file = tmp_path / "pids"
    exe = tmp_path / "llamafactory-cli"
    exe.write_text(FAKE_TRAINER.format(python=sys.executable, pids=str(pids_file)))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    recipe = tmp_path / "r.yml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(tiny)))
    env = {**os.environ, "LFW_LLAMAFACTORY_CLI": str(exe)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lfw.cli", "run", str(recipe), "--output-dir", str(tmp_path / "runs")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        preexec_fn=default_sigint,
    )
    deadline = time.time() + 60
    while not pids_file.exists() or len(pids_file.read_text().split()) < 2:
        assert time.time() < deadline and proc.poll() is None, proc.stdout.read().decode()[-2000:]
        time.sleep(0.2)
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == 130
    time.sleep(0.5)
    for pid in map(int, pids_file.read_text().split()):
        assert not alive(pid), f"process {pid} survived Ctrl-C"
    run_dir = next((tmp_path / "runs" / "e2e").iterdir())
    assert manifest(run_dir)["status"] == "interrupted"


def test_help_text_of_run_mentions_dry_run():
    assert (
        "--dry-run"
        in subprocess.run([sys.executable, "-m", "lfw.cli", "run", "--help"], capture_output=True, text=True).stdout
    )
