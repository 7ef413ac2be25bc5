"""Stage chains as LLaMA-Factory really runs them, on CPU: LoRA SFT -> DPO under DeepSpeed ZeRO-3.

Under ZeRO-3 LF cannot merge adapters, so it keeps training the SFT adapter whatever `create_new_adapter` says.
lfw renders exactly that, with the SFT model as a separate frozen reference; this test reads LF's own log to see
it did so, and checks that `lfw export` then merges the SFT weights once, not twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lfw.cli import main
from lfw.post.export.plan import plan_from_run
from tests.conftest import tiny_recipe


@pytest.mark.slow
def test_lora_sft_then_dpo_under_zero3_resumes_one_adapter(tiny, tmp_path: Path, offline_env):
    recipe = tiny_recipe(tiny, hardware={"device": "cpu", "gpus": 1, "deepspeed": "z3"})
    recipe["training"].update({"max_steps": 3, "global_batch_size": 4, "micro_batch_size": 2})
    recipe["stages"].append(
        {"stage": "dpo", "pref_beta": 0.1, "datasets": [{"path": str(tiny["dpo_pairs"]), "format": "preference"}]}
    )
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "runs")]) == 0
    run_dir = next((tmp_path / "runs" / recipe["name"]).iterdir())
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "ok"

    dpo_log = (run_dir / "logs" / "2-dpo.log").read_text(errors="replace")
    assert "Merged" not in dpo_log  # nothing merged: the SFT adapter itself keeps training
    assert f"Loaded adapter(s): {run_dir / '1-sft'}" in dpo_log
    assert f"Created reference model from {tiny['model']}" in dpo_log
    assert dpo_log.count(f"Loaded adapter(s): {run_dir / '1-sft'}") == 2  # the policy's, and the reference's
    dpo = yaml.safe_load((run_dir / "2-dpo.yaml").read_text())
    assert "create_new_adapter" not in dpo and dpo["ref_model_adapters"] == str(run_dir / "1-sft")

    # The DPO adapter holds SFT and DPO training: export merges it alone.
    assert plan_from_run(run_dir).adapters == [str(run_dir / "2-dpo")]
