"""`lfw doctor` against faked environments: metadata, nvidia-smi on PATH, an unwritable cache, bad recipes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from lfw.infra.errors import UserError
from lfw.infra.hardware import GPU, driver_version, visible_gpus
from lfw.preflight.doctor import (
    FAIL,
    OK,
    RECIPE_CHECKS,
    WARN,
    RecipeFacts,
    check_caches,
    check_disk,
    check_gpus,
    check_recipe,
    check_versions,
    check_vllm,
    run_doctor,
)
from lfw.preflight.doctor import recipe as checks_of
from lfw.recipe.loader import load_recipe
from tests.conftest import minimal_recipe

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


# nvidia-smi as lfw.infra.hardware asks it: the inventory, or the driver version alone.
FAKE_SMI = """#!/bin/sh
case "$*" in
  *driver_version*) printf '535.1\\n535.1\\n535.1\\n' ;;
  *) printf '0, Tesla T4, 15360, 7.5\\n1, Tesla T4, 15360, 7.5\\n2, NVIDIA H100 80GB HBM3, 81559, 9.0\\n' ;;
esac
"""


@pytest.fixture
def fake_smi(tmp_path, monkeypatch) -> None:
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text(FAKE_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")


def test_fake_nvidia_smi_on_path(fake_smi) -> None:
    assert driver_version() == "535.1"
    gpus = visible_gpus({"CUDA_VISIBLE_DEVICES": "0,1"})
    checks = check_gpus(driver_version(), gpus, {"CUDA_VISIBLE_DEVICES": "0,1"})
    assert by_name(checks, "CUDA driver").status == OK and "2 GPU(s) visible" in by_name(checks, "CUDA driver").detail
    assert by_name(checks, "bf16").status == WARN and "fp16" in by_name(checks, "bf16").fix


def test_doctor_sees_the_gpus_a_run_would_use(fake_smi) -> None:
    """CUDA_VISIBLE_DEVICES applies to doctor as to lfw run: the T4s hidden, only the H100 is checked."""
    checks = run_doctor(env={**os.environ, "CUDA_VISIBLE_DEVICES": "2"}, version_of=versions())
    driver = by_name(checks, "CUDA driver")
    assert "1 GPU(s) visible (CUDA_VISIBLE_DEVICES='2'): NVIDIA H100 80GB HBM3" in driver.detail
    assert by_name(checks, "bf16").status == OK
    hidden = by_name(run_doctor(env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, version_of=versions()), "CUDA driver")
    assert hidden.status == WARN and "no GPU visible (CUDA_VISIBLE_DEVICES='')" in hidden.detail


def test_vllm_found_as_serve_finds_it(tmp_path, monkeypatch) -> None:
    from lfw.infra.vllm_env import vllm_python

    broken = check_vllm({"LFW_VLLM_PYTHON": sys.executable})  # a Python without vLLM: misconfigured
    assert broken.status == FAIL and "cannot import vllm" in broken.detail
    missing = check_vllm({"LFW_VLLM_PYTHON": str(tmp_path / "nope")})
    assert missing.status == FAIL and "does not exist" in missing.detail
    try:
        python = vllm_python(env={})
    except UserError:
        python = None
    if python is not None:  # `make setup-vllm` ran: doctor names the same interpreter serve would start
        found = check_vllm({})
        assert found.status == OK and python in found.detail and "vllm" in found.detail
    monkeypatch.setattr("lfw.infra.vllm_env._candidate_venvs", lambda: [tmp_path / "no-venv"])
    monkeypatch.setenv("PATH", str(tmp_path))
    none = check_vllm({})
    assert none.status == WARN and "no Python with vLLM found" in none.detail


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
    with pytest.raises(UserError, match="lfw renders this key"):  # the crashing setting is refused at load
        load(write_recipe, tmp_path, hardware={"gpus": 4}, llamafactory={"ddp_find_unused_parameters": True})


def test_deepspeed_on_one_gpu_and_missing(write_recipe, tmp_path) -> None:
    loaded = load(write_recipe, tmp_path, hardware={"gpus": 1, "deepspeed": "z3"})
    assert "FORCE_TORCHRUN" in by_name(check_recipe(loaded, versions()), "DeepSpeed on one GPU").detail
    assert by_name(check_recipe(loaded, versions(deepspeed=True)), "DeepSpeed installed").status == FAIL


def test_qlora_with_zero3(write_recipe, tmp_path) -> None:
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
    assert "qwen3_nothink" in check.fix


def config_model(tmp_path, name: str, **config) -> str:
    folder = tmp_path / name
    folder.mkdir()
    base = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
    (folder / "config.json").write_text(json.dumps({**base, "vocab_size": 1000, **config}))
    return str(folder)


def template_check(write_recipe, tmp_path, path: str, template: str):
    loaded = load(write_recipe, tmp_path, model={"path": path, "template": template})
    return [c for c in check_recipe(loaded, versions()) if c.name == "template matches the model"]


def test_template_families_by_exact_template_name(write_recipe, tmp_path) -> None:
    # LLaMA-Factory registers deepseekr1 for DeepSeek-R1-Distill-Qwen: a Qwen2 architecture.
    distill = config_model(tmp_path, "DeepSeek-R1-Distill-Qwen-7B", model_type="qwen2")
    assert [c.status for c in template_check(write_recipe, tmp_path, distill, "deepseekr1")] == [OK]
    assert [c.status for c in template_check(write_recipe, tmp_path, distill, "llama3")] == [FAIL]
    # "phi" is not a word of "dolphin": a Llama fine-tune named dolphin is a Llama, and phi is no template for it.
    dolphin = template_check(write_recipe, tmp_path, "cognitivecomputations/dolphin-2.9-llama3-8b", "phi")
    assert [c.status for c in dolphin] == [FAIL] and "this is a llama model" in dolphin[0].detail
    assert template_check(write_recipe, tmp_path, "org/dolphin-chat", "llama3") == []  # family unknown: no claim
    qwen_moe = config_model(tmp_path, "moe", model_type="qwen3_moe")
    assert [c.status for c in template_check(write_recipe, tmp_path, qwen_moe, "qwen3_nothink")] == [OK]
    assert template_check(write_recipe, tmp_path, qwen_moe, "chatml") == []  # generic template: not checked
    mixtral = config_model(tmp_path, "mx", model_type="mixtral")
    assert [c.status for c in template_check(write_recipe, tmp_path, mixtral, "mistral")] == [OK]


def context_check(write_recipe, tmp_path, config: dict, training: dict, **changes):
    model = config_model(tmp_path, f"m{len(list(tmp_path.iterdir()))}", model_type="qwen3", **config)
    training = {"global_batch_size": 8, "max_steps": 5, **training}
    loaded = load(
        write_recipe, tmp_path, model={"path": model, "template": "qwen3_nothink"}, training=training, **changes
    )
    return by_name(check_recipe(loaded, versions()), "cutoff_len fits the model")


def test_cutoff_len_against_the_models_positions(write_recipe, tmp_path) -> None:
    positions = {"max_position_embeddings": 40960}
    ok = context_check(write_recipe, tmp_path, positions, {"cutoff_len": 32768})
    assert ok.status == OK and "40960 positions" in ok.detail
    long = context_check(write_recipe, tmp_path, positions, {"cutoff_len": 65536, "packing": False})
    assert long.status == WARN and "training.cutoff_len 65536 exceeds the model's 40960 positions" in long.detail
    assert "training.cutoff_len: 40960 or less" in long.fix and "rope_scaling: yarn" in long.fix
    packed = context_check(write_recipe, tmp_path, positions, {"cutoff_len": 65536, "packing": True})
    assert packed.status == FAIL and "packing" in packed.detail
    asked = context_check(
        write_recipe, tmp_path, positions, {"cutoff_len": 65536, "packing": True}, llamafactory={"rope_scaling": "yarn"}
    )
    assert asked.status == OK and "x2" in asked.detail  # LF: ceil(65536 / 40960)
    yarn = {
        **positions,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    }
    scaled = context_check(write_recipe, tmp_path, yarn, {"cutoff_len": 131072, "packing": True})
    assert scaled.status == OK and "yarn rope scaling x4" in scaled.detail


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
    check = by_name(check_recipe(loaded, versions(), gpus=[GPU(0, "Tesla V100", 16384, 7.0)]), "bf16 on this GPU")
    assert check.status == FAIL and "fp16" in check.fix


def test_dpo_needs_about_twice_the_memory(write_recipe, tmp_path) -> None:
    (tmp_path / "pref.json").write_text(json.dumps([{"instruction": "a", "chosen": "b", "rejected": "c"}]))
    stages = [{"stage": "dpo", "datasets": [{"path": "pref.json", "format": "preference"}]}]
    loaded = load(write_recipe, tmp_path, stages=stages, method={"type": "full"})
    check = by_name(check_recipe(loaded, versions(), gpus=[GPU(0, "H100", 81559, 9.0)]), "DPO memory")
    assert "for SFT" in check.detail
    small = by_name(check_recipe(loaded, versions(), gpus=[GPU(0, "L4", 8192, 8.9)]), "DPO memory")
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


def test_text_only_template_on_image_data_fails(write_recipe, tmp_path) -> None:
    """Render refuses it; doctor says the same instead of passing the recipe."""
    stages = [{"stage": "sft", "datasets": [{"path": "mm.json", "format": "multimodal"}]}]
    loaded = load(write_recipe, tmp_path, stages=stages)
    check = by_name(check_recipe(loaded, versions()), "template in LLaMA-Factory")
    assert check.status == FAIL and "text-only for images" in check.detail and "qwen2_vl" in check.fix
    loaded = load(write_recipe, tmp_path, stages=stages, model={"path": "Qwen/Qwen2-VL-2B", "template": "qwen2_vl"})
    assert by_name(check_recipe(loaded, versions()), "template in LLaMA-Factory").status == OK


# ---- each named check: one case it rejects (or speaks up on), one it passes (silent or ok) ----------------


def facts(write_recipe, tmp_path, version_of=None, gpus=None, **changes) -> RecipeFacts:
    return RecipeFacts.of(load(write_recipe, tmp_path, **changes), version_of or versions(), gpus)


def statuses(check, facts_: RecipeFacts) -> list[str]:
    return [c.status for c in check(facts_)]


def test_every_recipe_check_is_named_and_run_in_order() -> None:
    assert len({check.__name__ for check in RECIPE_CHECKS}) == len(RECIPE_CHECKS)
    assert all(check.__name__.startswith("check_") for check in RECIPE_CHECKS)


def test_check_versions_passes_when_everything_is_installed() -> None:
    assert {c.status for c in check_versions(versions())} == {OK}


def test_check_vllm_passes_on_an_interpreter_that_has_it(tmp_path) -> None:
    fake = tmp_path / "python"  # answers both probes: find_spec succeeds (exit 0), the version is printed
    fake.write_text("#!/bin/sh\necho vllm 0.0.test\n")
    fake.chmod(0o755)
    check = check_vllm({"LFW_VLLM_PYTHON": str(fake)})
    assert check.status == OK and check.detail == f"vllm 0.0.test ({fake})"


def test_check_gpus_passes_on_bf16_gpus() -> None:
    checks = check_gpus("535.1", [GPU(0, "NVIDIA H100", 81559, 9.0)], {})
    assert [c.status for c in checks] == [OK, OK]
    assert by_name(check_gpus("535.1", [GPU(0, "Tesla T4", 15360, 7.5)], {}), "bf16").status == WARN


def test_check_caches_passes_on_a_writable_home(tmp_path) -> None:
    assert {c.status for c in check_caches({"HF_HOME": str(tmp_path / "hf")})} == {OK}


def test_check_disk_against_the_need(tmp_path) -> None:
    assert check_disk(tmp_path / "not" / "yet", 0).status == OK
    full = check_disk(tmp_path, 2**70)
    assert full.status == FAIL and "larger disk" in full.fix


def test_check_ddp_lora_speaks_only_for_multi_gpu_lora(write_recipe, tmp_path) -> None:
    assert statuses(checks_of.check_ddp_lora, facts(write_recipe, tmp_path, hardware={"gpus": 4})) == [OK]
    assert statuses(checks_of.check_ddp_lora, facts(write_recipe, tmp_path, hardware={"gpus": 1})) == []


def test_check_deepspeed_one_gpu(write_recipe, tmp_path) -> None:
    one = facts(write_recipe, tmp_path, hardware={"gpus": 1, "deepspeed": "z2"})
    assert statuses(checks_of.check_deepspeed_one_gpu, one) == [OK]
    two = facts(write_recipe, tmp_path, hardware={"gpus": 2, "deepspeed": "z2"})
    assert statuses(checks_of.check_deepspeed_one_gpu, two) == []


def test_check_deepspeed_installed(write_recipe, tmp_path) -> None:
    hardware = {"gpus": 2, "deepspeed": "z2"}
    missing = facts(write_recipe, tmp_path, versions(deepspeed=True), hardware=hardware)
    assert statuses(checks_of.check_deepspeed_installed, missing) == [FAIL]
    assert statuses(checks_of.check_deepspeed_installed, facts(write_recipe, tmp_path, hardware=hardware)) == []


def test_check_qlora_zero3(write_recipe, tmp_path) -> None:
    z3 = {"gpus": 2, "deepspeed": "z3"}
    qlora = facts(write_recipe, tmp_path, method={"type": "qlora"}, hardware=z3)
    assert statuses(checks_of.check_qlora_zero3, qlora) == [OK]
    assert statuses(checks_of.check_qlora_zero3, facts(write_recipe, tmp_path, hardware=z3)) == []


def test_check_bitsandbytes(write_recipe, tmp_path) -> None:
    missing = facts(write_recipe, tmp_path, versions(bitsandbytes=True), method={"type": "qlora"})
    assert statuses(checks_of.check_bitsandbytes, missing) == [FAIL]
    assert statuses(checks_of.check_bitsandbytes, facts(write_recipe, tmp_path, method={"type": "qlora"})) == []


def test_check_prequantized_zero3_passes_under_zero2(write_recipe, tmp_path) -> None:
    model = config_model(tmp_path, "awq", model_type="qwen3", quantization_config={"quant_method": "awq"})
    changes = {"model": {"path": model, "template": "qwen3_nothink"}}
    z3 = facts(write_recipe, tmp_path, hardware={"gpus": 2, "deepspeed": "z3"}, **changes)
    assert statuses(checks_of.check_prequantized_zero3, z3) == [FAIL]
    z2 = facts(write_recipe, tmp_path, hardware={"gpus": 2, "deepspeed": "z2"}, **changes)
    assert statuses(checks_of.check_prequantized_zero3, z2) == []


def test_check_qwen3_thinking_passes_on_reasoning_data(write_recipe, tmp_path) -> None:
    model = {"path": "Qwen/Qwen3-0.6B", "template": "qwen3"}
    assert statuses(checks_of.check_qwen3_thinking, facts(write_recipe, tmp_path, model=model)) == [WARN]
    (tmp_path / "think.json").write_text(json.dumps([{"instruction": "a", "input": "", "output": "<think>x"}]))
    stages = [{"stage": "sft", "datasets": [{"path": "think.json", "format": "alpaca"}]}]
    assert statuses(checks_of.check_qwen3_thinking, facts(write_recipe, tmp_path, model=model, stages=stages)) == []


def test_check_template_family(write_recipe, tmp_path) -> None:
    wrong = facts(write_recipe, tmp_path, model={"path": "Qwen/Qwen3-4B", "template": "llama3"})
    assert statuses(checks_of.check_template_family, wrong) == [FAIL]
    right = facts(write_recipe, tmp_path, model={"path": "Qwen/Qwen3-4B", "template": "qwen3_nothink"})
    assert statuses(checks_of.check_template_family, right) == [OK]


def test_check_flash_attn(write_recipe, tmp_path) -> None:
    fa2 = {"path": "Qwen/Qwen3-4B", "template": "qwen3_nothink", "flash_attn": "fa2"}
    auto = {**fa2, "flash_attn": "auto"}
    no_fa = versions(flash_attn=True)
    assert statuses(checks_of.check_flash_attn, facts(write_recipe, tmp_path, no_fa, model=fa2)) == [FAIL]
    assert statuses(checks_of.check_flash_attn, facts(write_recipe, tmp_path, model=fa2)) == []
    assert statuses(checks_of.check_flash_attn, facts(write_recipe, tmp_path, no_fa, model=auto)) == [OK]


def test_check_liger_kernel(write_recipe, tmp_path) -> None:
    training = {"global_batch_size": 8, "max_steps": 5, "liger_kernel": True}
    missing = facts(write_recipe, tmp_path, versions(liger_kernel=True), training=training)
    assert statuses(checks_of.check_liger_kernel, missing) == [FAIL]
    assert statuses(checks_of.check_liger_kernel, facts(write_recipe, tmp_path, training=training)) == []


def test_check_bf16_gpu_passes_on_ampere(write_recipe, tmp_path) -> None:
    training = {"global_batch_size": 8, "max_steps": 5, "precision": "bf16"}
    h100 = facts(write_recipe, tmp_path, gpus=[GPU(0, "H100", 81559, 9.0)], training=training)
    assert statuses(checks_of.check_bf16_gpu, h100) == []
    v100 = facts(write_recipe, tmp_path, gpus=[GPU(0, "Tesla V100", 16384, 7.0)], training=training)
    assert statuses(checks_of.check_bf16_gpu, v100) == [FAIL]


def test_check_dpo_memory_silent_without_preference_stages(write_recipe, tmp_path) -> None:
    assert statuses(checks_of.check_dpo_memory, facts(write_recipe, tmp_path, method={"type": "full"})) == []
