"""`lfw status` on hand-written run directories shaped like lfw's and LLaMA-Factory's files.

A real run read by `lfw status` (eval loss and perplexity from val_size, the newest run of a recipe's folder)
is in tests/recipe/test_seed_recipes.py (seed 004); tokens/s from a real DPO stage there too (seed 000).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfw.cli import main
from tests.conftest import REPO

# Records as LLaMA-Factory 0.9.5's LogCallback writes them (training steps, an evaluation, the final summary).
SFT_LOG = [
    {"current_steps": 5, "total_steps": 10, "loss": 2.9, "lr": 1e-4, "epoch": 0.5, "percentage": 50.0,
     "elapsed_time": "0:00:05", "remaining_time": "0:00:05", "throughput": 1500.5, "total_tokens": 7502},
    {"current_steps": 5, "total_steps": 10, "eval_loss": 3.046, "epoch": 0.5, "percentage": 50.0,
     "elapsed_time": "0:00:06", "remaining_time": "0:00:06"},
    {"current_steps": 10, "total_steps": 10, "loss": 2.5, "lr": 5e-5, "epoch": 1.0, "percentage": 100.0,
     "elapsed_time": "0:00:11", "remaining_time": "0:00:00", "throughput": 1480.0, "total_tokens": 14800,
     "vram_allocated": 10.5, "vram_reserved": 12.25},
    {"current_steps": 10, "total_steps": 10, "eval_loss": 2.5031, "epoch": 1.0, "percentage": 100.0,
     "elapsed_time": "0:00:12", "remaining_time": "0:00:00"},
    {"current_steps": 10, "total_steps": 10, "epoch": 1.0, "percentage": 100.0, "elapsed_time": "0:00:12",
     "remaining_time": "0:00:00"},
]  # fmt: skip
DPO_LOG = [
    {"current_steps": 3, "total_steps": 40, "loss": 0.6931, "accuracy": 0.5, "lr": 1e-5, "epoch": 0.07,
     "percentage": 7.5, "elapsed_time": "0:01:00", "remaining_time": "0:12:20"},
]  # fmt: skip


def write_run(folder: Path, status: str = "running") -> Path:
    """A run directory: manifest.json with three stages (done, running, not started) and their trainer logs."""
    folder.mkdir(parents=True)
    stages = [
        {"name": "1-sft", "status": "ok", "output_dir": str(folder / "1-sft"), "seconds": 14.6},
        {"name": "2-dpo", "status": status, "output_dir": str(folder / "2-dpo")},
        {"name": "3-kto", "status": "pending", "output_dir": str(folder / "3-kto")},
    ]
    manifest = {"created": "2025-01-01T12:00:00+00:00", "recipe": {"path": "r.yml"}, "status": status, "stages": stages}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for name, records in (("1-sft", SFT_LOG), ("2-dpo", DPO_LOG)):
        (folder / name).mkdir()
        lines = [json.dumps(r) for r in records]
        (folder / name / "trainer_log.jsonl").write_text("\n".join(lines) + "\n")
    with open(folder / "2-dpo" / "trainer_log.jsonl", "a") as log:
        log.write('{"current_steps": 4, "total_')  # LF is writing its next line
    return folder


def status_of(path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["status", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_status_reads_each_stage(tmp_path, capsys):
    report = status_of(write_run(tmp_path / "run"), capsys)
    sft, dpo, kto = report["stages"]
    assert report["status"] == "running" and report["recipe"] == "r.yml"
    assert (sft["step"], sft["total_steps"], sft["loss"], sft["learning_rate"]) == (10, 10, 2.5, 5e-5)
    assert (sft["tokens_per_second"], sft["total_tokens"], sft["gpu_memory_gib"]) == (1480.0, 14800, 12.25)
    assert [(e["step"], e["eval_loss"]) for e in sft["evaluations"]] == [(5, 3.046), (10, 2.5031)]
    assert sft["evaluations"][-1]["perplexity"] == pytest.approx(math.exp(2.5031))
    assert sft["eta"] is None  # finished: LF's last remaining_time is no ETA
    assert (dpo["step"], dpo["total_steps"], dpo["eta"], dpo["accuracy"]) == (3, 40, "0:12:20", 0.5)
    assert dpo["evaluations"] == [] and dpo["tokens_per_second"] is None  # half-written line skipped
    assert kto["status"] == "pending" and kto["step"] is None


def test_status_text_shows_what_is_known(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "1-sft  ok  step 10/10  epoch 1.00  loss 2.5000  lr 5.00e-05" in out
    assert "1,480 tokens/s  GPU 12.25 GiB reserved  eval loss 2.5031 (perplexity 12.22)  15 s" in out
    assert "2-dpo  running  step 3/40  epoch 0.07  loss 0.6931  lr 1.00e-05  reward accuracy 0.50  eta 0:12:20" in out
    assert "\n3-kto  pending\n" in out
    assert "1-sft: evaluations on the held-out data" in out and "3.0460" in out and "21.03" in out


def test_status_of_a_recipe_folder_is_its_newest_run(tmp_path, capsys):
    old = write_run(tmp_path / "name" / "20250101-120000", status="failed")
    new = write_run(tmp_path / "name" / "20250102-120000", status="ok")
    os.utime(old / "manifest.json", (2e9, 2e9))  # newest by manifest time, not by name
    os.utime(new / "manifest.json", (1e9, 1e9))
    assert status_of(tmp_path / "name", capsys)["run_dir"] == str(old)


def test_status_before_any_log_and_on_bad_paths(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    stages = [{"name": "1-sft", "status": "running", "output_dir": str(run / "1-sft")}]
    (run / "manifest.json").write_text(json.dumps({"status": "running", "stages": stages}))
    (stage,) = status_of(run, capsys)["stages"]
    assert stage["status"] == "running" and stage["step"] is None and stage["loss"] is None

    assert main(["status", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["status", str(tmp_path / "empty")]) == 2
    assert "not an lfw run directory" in capsys.readouterr().err
    (run / "manifest.json").write_text("{")
    assert main(["status", str(run)]) == 2
    assert "manifest.json: unreadable" in capsys.readouterr().err


def test_status_imports_no_heavy_modules(tmp_path):
    run = write_run(tmp_path / "run")
    check = (
        "import sys\nfrom lfw.cli import main\n"
        f"code = main(['status', {str(run)!r}])\n"
        "heavy = [m for m in ('torch', 'transformers', 'llamafactory', 'datasets', 'deepspeed') if m in sys.modules]\n"
        "print('CODE=%d HEAVY=%s' % (code, ','.join(heavy)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "CODE=0 HEAVY=", proc.stdout[-500:]


def test_status_lists_the_steps_after_training_and_the_live_line_matches(tmp_path, capsys):
    from lfw.launch.progress import describe

    run = write_run(tmp_path / "run")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["steps"] = [{"name": "export-1-sft", "status": "ok", "seconds": 9.4}, {"name": "eval-base"}]
    (run / "manifest.json").write_text(json.dumps(manifest))
    capsys.readouterr()
    assert main(["status", str(run)]) == 0
    out = capsys.readouterr().out
    assert "\nexport-1-sft  ok  9 s\n" in out and "\neval-base  pending\n" in out
    assert out.count("eval loss 2.5031") == 1
    assert [s["name"] for s in status_of(run, capsys)["steps"]] == ["export-1-sft", "eval-base"]
    # lfw run's live line for one trainer_log record says it in the same words as lfw status
    live = describe(SFT_LOG[2])  # eta stays in the live line; a finished stage's status drops it
    assert live.startswith("step 10/10  epoch 1.00  loss 2.5000  lr 5.00e-05  eta 0:00:00  1,480 tokens/s")
    assert live.replace("  eta 0:00:00", "") in out
