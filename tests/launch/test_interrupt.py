"""An interrupted pipeline resumes: Ctrl-C to `lfw run` mid-training and again mid-eval, then `lfw run --resume`.

Real processes on CPU with the tiny model: the first interrupt lands after a checkpoint, so training continues from
it; the second lands while the base model's eval runs, so that eval is redone and the finished training is kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lfw.launch.progress import read_trainer_log
from tests.conftest import clean_env, default_sigint, tiny_recipe


def _start(recipe: Path, *extra: str) -> subprocess.Popen:
    env = {**clean_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lfw.cli", "run", str(recipe), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=default_sigint,
    )


def _interrupt_when(proc: subprocess.Popen, ready, timeout: float = 300) -> int:
    """Send Ctrl-C's SIGINT once `ready()` holds, and return lfw's exit code."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "lfw finished before the interrupt could land"
        assert time.monotonic() < deadline, "the moment to interrupt never came"
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    return proc.wait(timeout=120)


@pytest.mark.slow
def test_interrupted_mid_training_and_mid_eval_resumes(tiny, tmp_path: Path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(json.loads(Path(tiny["sft_alpaca"]).read_text())[:2]))
    recipe = tiny_recipe(tiny, output_dir=str(tmp_path / "runs"))
    recipe["training"].update({"max_steps": 40, "save_steps": 4, "logging_steps": 1})
    recipe["export"] = True  # the last stage, scored beside the base
    recipe["eval"] = {"benchmarks": [{"path": str(bench), "kind": "alpaca", "name": "syn"}], "backend": "hf"}
    recipe["eval"].update({"limit": 2, "max_new_tokens": 4})
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    runs = tmp_path / "runs" / recipe["name"]

    def run_dir() -> Path | None:
        found = list(runs.iterdir()) if runs.is_dir() else []
        return found[0] if found else None

    def checkpointed() -> bool:
        run = run_dir()
        log = run / "1-sft" / "trainer_log.jsonl" if run else None
        steps = [r.get("current_steps", 0) for r in read_trainer_log(log)] if log and log.is_file() else []
        return bool(run and (run / "1-sft" / "checkpoint-4").is_dir() and steps and max(steps) >= 6)

    assert _interrupt_when(_start(path), checkpointed) != 0
    run = run_dir()
    assert run is not None and len(list(runs.iterdir())) == 1
    first = json.loads((run / "manifest.json").read_text())
    assert first["status"] != "ok" and first["stages"][0]["status"] != "ok"
    assert max(r.get("current_steps", 0) for r in read_trainer_log(run / "1-sft" / "trainer_log.jsonl")) < 40

    def evaluating() -> bool:
        return (run / "logs" / "eval-base.log").is_file() and (run / "logs" / "eval-base.log").stat().st_size > 0

    assert _interrupt_when(_start(path, "--resume"), evaluating) != 0
    second = json.loads((run / "manifest.json").read_text())
    assert second["stages"][0]["status"] == "ok"  # training finished on the resume, from its checkpoint
    assert "checkpoint-" in (run / "1-sft.resume.yaml").read_text()
    assert not (run / "eval" / "base" / "summary.json").is_file()

    resumed = _start(path, "--resume")
    assert resumed.wait(timeout=600) == 0
    final = json.loads((run / "manifest.json").read_text())
    assert final["status"] == "ok" and final["stages"] == second["stages"]  # training was not run a third time
    assert {s["name"]: s["status"] for s in final["steps"]} == {
        "export-1-sft": "ok",
        "eval-base": "ok",
        "eval-1-sft": "ok",
    }
    assert json.loads((run / "eval" / "base" / "summary.json").read_text())["benchmarks"]["syn"]["samples"] == 2
    assert len(final["resumed"]) == 2 and os.listdir(runs) == [run.name]
