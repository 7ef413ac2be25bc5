"""`lfw doctor` against faked environments: metadata, nvidia-smi on PATH, an unwritable cache, bad recipes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from tests.conftest import minimal_recipe

from lfw.doctor import FAIL, OK, WARN, check_caches, check_gpus, check_recipe, check_versions, query_driver
from lfw.recipe_loader import load_recipe

ALL = {
    "llamafactory": "0.9.5",
    "transformers": "5.6.0",
    "peft": "0.18.1",
    "trl": "0.24.0",
    "deepspeed": "0.16.9",
    "bitsandbytes": "0.50.2",
    "flash-attn": "2.8.0",
    "liger-kernel": "0.8.5",
}


def versions(**missing: bool):
    return lambda dist: None if missing.get(dist.replace("-", "_")) else ALL.get(dist)


def by_name(checks, name):
    return next(c for c in checks if c.name == name)


def load(write_recipe, tmp_path, **changes):
    (tmp_path / "data.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "b"}]))
    recipe = minimal_recipe(**{"hardware": {"gpus": 1}, **changes})
    return load_recipe(str(write_recipe(recipe)))


def test_versions_from_metadata() -> None:
    checks = check_versions(versions(flash_attn=True, llamafactory=True))
    assert by_name(checks, "transformers").detail == "5.6.0"
    assert by_name(checks, "flash-attn").status == WARN
    assert by_name(checks, "LLaMA-Factory").status == FAIL


def test_fake_nvidia_smi_on_path(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho '535.1, Tesla T4, 7.5, 15360'\necho '535.1, Tesla T4, 7.5, 15360'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    driver, gpus = query_driver()
    assert driver == "535.1" and len(gpus) == 2
    checks = check_gpus(driver, gpus)
    assert by_name(checks, "CUDA driver").status == OK
    assert by_name(checks, "bf16").status == WARN and "fp16" in by_name(checks, "bf16").fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_cache_is_a_failure(tmp_path) -> None:
    home = tmp_path / "hf"
    (home / "hub").mkdir(parents=True)
    (home / "hub").chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        checks = check_caches({"HF_HOME": str(home)})
    finally:
        (home / "hub").chmod(0o755)
    failed = by_name(checks, "hub cache writable")
    assert failed.status == FAIL and "PermissionError" in failed.detail and "HF_HOME" in failed.fix


def test_unwritable_cache_detected_even_as_root(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    checks = check_caches({"HF_HOME": str(blocker / "hf")})
    assert by_name(checks, "HF_HOME writable").status == FAIL


def test_ddp_lora_gradient_checkpointing(write_recipe, tmp_path) -> None:
    loaded = load(write_recipe, tmp_path, hardware={"gpus": 4})
    assert (
        "ddp_find_unused_parameters: false"
        in by_name(check_recipe(loaded, versions()), "DDP + LoRA + gradient checkpointing").detail
    )
    loaded = load(write_recipe, tmp_path, hardware={"gpus": 4}, llamafactory={"ddp_find_unused_parameters": True})
    assert by_name(check_recipe(loaded, versions()), "DDP + LoRA + gradient checkpointing").status == FAIL


def test_deepspeed_on_one_gpu_and_missing(write_recipe, tmp_path) -> None:
    loaded = load(write_recipe, tmp_path, hardware={"gpus": 1, "deepspeed": "z3"})
    assert "FORCE_TORCHRUN" in by_name(check_recipe(loaded, versions()), "DeepSpeed on one GPU").detail
    assert by_name(check_recipe(loaded, versions(deepspeed=True)), "DeepSpeed installed").status == FAIL


def test_qlora_with_zero3(write_recipe, tmp_path) -> None:
    method = {"type": "qlora", "quantization": {"bits": 8}}
    loaded = load(write_recipe, tmp_path, method=method, hardware={"gpus": 2, "deepspeed": "z3"})
    assert by_name(check_recipe(loaded, versions()), "QLoRA + ZeRO-3").status == FAIL
    loaded = load(write_recipe, tmp_path, method={"type": "qlora"}, hardware={"gpus": 2, "deepspeed": "z3"})
    assert by_name(check_recipe(loaded, versions()), "QLoRA + ZeRO-3").status == OK


def test_prequantized_model_with_zero3(write_recipe, tmp_path) -> None:
    model = tmp_path / "gptq-model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "model_type": "qwen3",
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 128,
                "vocab_size": 1000,
                "quantization_config": {"quant_method": "gptq"},
            }
        )
    )
    loaded = load(
        write_recipe,
        tmp_path,
        model={"path": str(model), "template": "qwen3_nothink"},
        hardware={"gpus": 2, "deepspeed": "z3"},
    )
    check = by_name(check_recipe(loaded, versions()), "pre-quantized model + ZeRO-3")
    assert check.status == FAIL and "gptq" in check.detail


def test_qwen3_template_on_data_without_think(write_recipe, tmp_path) -> None:
    loaded = load(write_recipe, tmp_path, model={"path": "Qwen/Qwen3-0.6B", "template": "qwen3"})
    check = by_name(check_recipe(loaded, versions()), "template qwen3 on data without reasoning")
    assert check.status == WARN and check.fix == "model.template: qwen3_nothink"


def test_template_family_mismatch(write_recipe, tmp_path) -> None:
    loaded = load(write_recipe, tmp_path, model={"path": "Qwen/Qwen3-4B", "template": "llama3"})
    check = by_name(check_recipe(loaded, versions()), "template matches the model")
    assert check.status == FAIL and "llama" in check.detail and "qwen" in check.detail


def test_flash_attn_missing(write_recipe, tmp_path) -> None:
    loaded = load(
        write_recipe,
        tmp_path,
        model={"path": "Qwen/Qwen3-4B", "template": "qwen3_nothink", "flash_attn": "fa2"},
    )
    check = by_name(check_recipe(loaded, versions(flash_attn=True)), "flash attention")
    assert check.status == FAIL and "sdpa" in check.fix


def test_bf16_on_a_gpu_without_it(write_recipe, tmp_path) -> None:
    loaded = load(write_recipe, tmp_path, training={"global_batch_size": 8, "max_steps": 5, "precision": "bf16"})
    check = by_name(check_recipe(loaded, versions(), gpus=[("Tesla V100", 7.0, 16384)]), "bf16 on this GPU")
    assert check.status == FAIL and "fp16" in check.fix


def test_dpo_needs_about_twice_the_memory(write_recipe, tmp_path) -> None:
    (tmp_path / "pref.json").write_text(json.dumps([{"instruction": "a", "chosen": "b", "rejected": "c"}]))
    stages = [{"stage": "dpo", "datasets": [{"path": "pref.json", "format": "preference"}]}]
    loaded = load(write_recipe, tmp_path, stages=stages, method={"type": "full"})
    check = by_name(check_recipe(loaded, versions(), gpus=[("H100", 9.0, 81559)]), "DPO memory")
    assert "for SFT" in check.detail
    small = by_name(check_recipe(loaded, versions(), gpus=[("L4", 8.9, 8192)]), "DPO memory")
    assert small.status == FAIL


def test_doctor_command_exit_code_and_no_torch(write_recipe, tmp_path) -> None:
    loaded_path = write_recipe(minimal_recipe(model={"path": "Qwen/Qwen3-4B", "template": "llama3"}))
    code = (
        f"import sys; from lfw.cli import main; rc = main(['doctor', {str(loaded_path)!r}]);"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules];"
        "print('RC', rc, bad)"
    )
    env = {**os.environ, "COLUMNS": "250"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env)
    assert "RC 1 []" in done.stdout, done.stdout + done.stderr
    assert "template matches the model" in done.stdout
