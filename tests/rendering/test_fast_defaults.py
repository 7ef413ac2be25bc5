"""Fast defaults: a bare recipe renders packing, the liger kernel, the planner's micro batch and checkpointing,
workers from the CPU count, fused AdamW and bf16, each with its reason in a comment, each overridable; on the CPU
what works there. LLaMA-Factory's own judgement of these files: tests/rendering/test_oracle.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lfw.infra.errors import UserError
from lfw.infra.hardware import GPU
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.rendering import speed
from lfw.rendering.render import render
from tests.conftest import minimal_recipe

RUN_DIR = Path("/RUN/t/stamp")
H200 = GPU(0, "NVIDIA H200", 143771, 9.0)


@pytest.fixture(autouse=True)
def _sixteen_cpus(monkeypatch):
    monkeypatch.setenv("LFW_CPUS", "16")
    monkeypatch.delenv("LFW_GPU_MEM_GIB", raising=False)


def bare(**training) -> dict:
    """Model, data, max_steps: nothing about speed. Hub data: its size is unknown, so tokenization workers follow
    the CPU count alone (local files: also their size, see test_worker_counts_follow_the_cpus)."""
    recipe = minimal_recipe(method={"type": "full"}, hardware={"gpus": 1})
    recipe["training"] = {"max_steps": 5, **training}
    recipe["stages"][0]["datasets"] = [{"id": "tatsu-lab/alpaca", "format": "alpaca"}]
    return recipe


def rendered(write_recipe, recipe: dict, target: Target, *overrides: str) -> tuple[dict, str]:
    rendering = render(load_recipe(str(write_recipe(recipe)), list(overrides)), target, RUN_DIR)
    text = next(f.content for f in rendering.files if f.name == rendering.stages[0].config)
    return yaml.safe_load(text), text


def gpus(count: int = 1, gpu: GPU = H200) -> Target:
    return Target(
        "cuda", count, gpus=tuple(GPU(i, gpu.name, gpu.memory_mib, gpu.compute_capability) for i in range(count))
    )


def test_bare_recipe_on_a_gpu_gets_every_fast_default(write_recipe):
    config, text = rendered(write_recipe, bare(), gpus(1))
    assert config["neat_packing"] is True and "packing" not in config  # LF turns packing on from neat_packing
    assert config["enable_liger_kernel"] is True
    assert config["optim"] == "adamw_torch_fused"
    assert config["dataloader_num_workers"] == 4 and config["preprocessing_num_workers"] == 16
    assert config["bf16"] is True and config["fp16"] is False
    micro = config["per_device_train_batch_size"]
    assert micro > 1 and micro * config["gradient_accumulation_steps"] == 16  # the global batch is kept
    assert config["disable_gradient_checkpointing"] is True  # a 0.6B model on 140 GiB needs no recompute
    for reason in ("neat packing", "liger kernel", "data-loader workers per process: 4", "tokenization workers: 16",
                   f"micro batch {micro}: the memory planner's pick", "gradient checkpointing off"):  # fmt: skip
        assert f"# {reason}" in text, reason


OVERRIDES = {
    "training.packing=false": lambda c: "neat_packing" not in c and "packing" not in c,
    "training.packing=plain": lambda c: c["packing"] is True and "neat_packing" not in c,
    "training.packing=true": lambda c: c["packing"] is True and "neat_packing" not in c,
    "training.liger_kernel=false": lambda c: "enable_liger_kernel" not in c,
    "training.micro_batch_size=2": lambda c: c["per_device_train_batch_size"] == 2,
    "training.gradient_checkpointing=true": lambda c: "disable_gradient_checkpointing" not in c,
    "training.dataloader_workers=1": lambda c: c["dataloader_num_workers"] == 1,
    "training.preprocessing_workers=null": lambda c: "preprocessing_num_workers" not in c,
    "training.precision=fp16": lambda c: c["fp16"] is True and c["bf16"] is False,
    "llamafactory.optim=adamw_torch": lambda c: c["optim"] == "adamw_torch",
    "llamafactory.neat_packing=false": lambda c: c["neat_packing"] is False,
    "llamafactory.dataloader_num_workers=2": lambda c: c["dataloader_num_workers"] == 2,
}


@pytest.mark.parametrize("override", sorted(OVERRIDES), ids=str)
def test_each_default_is_overridden_by_the_recipe(write_recipe, override):
    config, text = rendered(write_recipe, bare(), gpus(1), override)
    assert OVERRIDES[override](config), config
    key = override.split("=")[0].removeprefix("llamafactory.")
    if override.startswith("llamafactory."):  # the passthrough replaces the default line: the key appears once
        assert text.count(f"\n{key}:") == 1


def test_cpu_keeps_what_runs_there_and_says_so(write_recipe):
    recipe = bare()
    recipe["hardware"] = {"device": "cpu"}
    config, text = rendered(write_recipe, recipe, Target("cpu", 1))
    assert "neat_packing" not in config and "# packing off on CPU" in text  # max_steps runs stay as short
    packed, _ = rendered(write_recipe, recipe, Target("cpu", 1), "training.packing=neat")
    assert packed["neat_packing"] is True  # SDPA's 4D mask runs on the CPU too, when asked
    assert "enable_liger_kernel" not in config and "# liger kernel off: its Triton kernels need a CUDA GPU" in text
    assert config["dataloader_num_workers"] == 0 and config["preprocessing_num_workers"] == 16
    assert config["per_device_train_batch_size"] == 1 and config["use_cpu"] is True and config["bf16"] is False
    assert config["disable_gradient_checkpointing"] is True and "# gradient checkpointing off: no recompute" in text
    with pytest.raises(UserError, match="liger kernel cannot run here: its Triton kernels need a CUDA GPU"):
        rendered(write_recipe, recipe, Target("cpu", 1), "training.liger_kernel=true")


def test_packing_per_stage(write_recipe):
    recipe = bare()
    recipe["stages"] = [
        {"stage": "pt", "datasets": [{"path": "t.json", "format": "text"}]},
        {"stage": "dpo", "datasets": [{"path": "p.json", "format": "preference"}]},
    ]
    rendering = render(load_recipe(str(write_recipe(recipe))), gpus(1), RUN_DIR)
    pt, dpo = (yaml.safe_load(next(f.content for f in rendering.files if f.name == s.config)) for s in rendering.stages)
    assert "packing" not in pt and "neat_packing" not in pt  # LLaMA-Factory packs pt itself
    assert "packing" not in dpo and "neat_packing" not in dpo  # it cannot pack pairs
    off = render(load_recipe(str(write_recipe(recipe)), ["training.packing=false"]), gpus(1), RUN_DIR)
    assert yaml.safe_load(off.files[1].content)["packing"] is False  # pt unpacked only when asked
    with pytest.raises(UserError, match="neat packing is for sft only"):
        render(load_recipe(str(write_recipe(recipe)), ["training.packing=neat"]), gpus(1), RUN_DIR)


def test_neat_packing_with_flash_attention_2_takes_batch_one(write_recipe):
    recipe = bare()
    recipe["model"]["flash_attn"] = "fa2"
    config, text = rendered(write_recipe, recipe, gpus(1))
    assert config["per_device_train_batch_size"] == 1 and config["gradient_accumulation_steps"] == 16
    assert "FlashAttention-2" in text
    with pytest.raises(UserError, match="neat packing with FlashAttention-2 takes batch 1"):
        rendered(write_recipe, recipe, gpus(1), "training.micro_batch_size=4")


def test_unknown_gpu_memory_falls_back_to_the_safe_settings(write_recipe, monkeypatch):
    config, text = rendered(write_recipe, bare(), Target("cuda", 2))  # rendering for GPUs that are not here
    assert config["per_device_train_batch_size"] == 1 and "disable_gradient_checkpointing" not in config
    assert "the GPU memory is unknown here" in text and "LFW_GPU_MEM_GIB" in text
    monkeypatch.setenv("LFW_GPU_MEM_GIB", "80")
    planned, _ = rendered(write_recipe, bare(), Target("cuda", 2))
    assert planned["per_device_train_batch_size"] > 1


def test_checkpointing_only_when_memory_needs_it(write_recipe):
    big = bare(cutoff_len=8192)
    big["model"]["path"] = "Qwen/Qwen3-8B"
    small_gpu = GPU(0, "NVIDIA L4", 23034, 8.9)
    config, text = rendered(write_recipe, big, gpus(4, small_gpu), "method.type=qlora")
    assert "disable_gradient_checkpointing" not in config and "gradient checkpointing on: memory needs it" in text


def test_nothing_fits_names_the_zero_stage_that_would(write_recipe):
    recipe = bare(global_batch_size=8)
    recipe["model"]["path"] = "Qwen/Qwen3-14B"
    config, text = rendered(write_recipe, recipe, gpus(4, H200), "hardware.gpus=4")
    assert config["per_device_train_batch_size"] == 1 and "disable_gradient_checkpointing" not in config
    assert "does not fit" in text and "hardware.deepspeed: z" in text


def test_worker_counts_follow_the_cpus(write_recipe, monkeypatch):
    out = speed.SpeedKeys()
    training = load_recipe(str(write_recipe(bare()))).recipe.stage_training(0)
    speed.worker_keys(training, "cuda", 8, out, None, cpus=128)  # hub data: size unknown
    assert out.keys == {"dataloader_num_workers": 4, "preprocessing_num_workers": 16}
    speed.worker_keys(training, "cuda", 8, out, 10**9, cpus=4)
    assert out.keys == {"dataloader_num_workers": 1, "preprocessing_num_workers": 4}
    speed.worker_keys(training, "cuda", 8, out, 20 * 2**20, cpus=64)  # one per 8 MiB of data
    assert out.keys == {"dataloader_num_workers": 4, "preprocessing_num_workers": 3}
    small = speed.SpeedKeys()
    speed.worker_keys(training, "cpu", 1, small, 1000, cpus=64)  # tiny data: LF's one process
    assert small.keys == {"dataloader_num_workers": 0} and "tokenization in one process" in small.notes[-1]
    monkeypatch.setenv("LFW_CPUS", "3")
    assert speed.available_cpus() == 3


def test_liger_stays_off_where_it_cannot_run(write_recipe, tmp_path, monkeypatch):
    model = tmp_path / "gpt2-like"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    recipe = bare(micro_batch_size=1, gradient_checkpointing=True)
    recipe["model"]["path"] = str(model)
    config, text = rendered(write_recipe, recipe, gpus(1))
    assert "enable_liger_kernel" not in config and "no liger kernel for model type gpt2" in text
    monkeypatch.setattr(speed, "installed_version", lambda dist: None)  # the GPUs are here, the package is not
    config, text = rendered(write_recipe, bare(), gpus(1))
    assert "enable_liger_kernel" not in config and "liger-kernel is not installed here" in text
    with pytest.raises(UserError, match="liger-kernel is not installed here"):
        rendered(write_recipe, bare(), gpus(1), "training.liger_kernel=true")


@pytest.mark.slow
def test_neat_packing_trains_on_the_cpu_through_llamafactory(tiny, tmp_path):
    """LF packs the rows (fewer, longer sequences, each sample's mask index its own) and trains on them."""
    import math

    from datasets import load_from_disk

    from tests.conftest import assert_complete, losses, run_recipe, tiny_recipe

    recipe = tiny_recipe(tiny)
    recipe["training"].update(packing="neat", max_steps=4)
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0 and run_dir is not None
    assert_complete(run_dir, ["1-sft"])
    assert all(math.isfinite(x) for x in losses(run_dir, "1-sft"))
    config = yaml.safe_load((run_dir / "1-sft.yaml").read_text())
    assert config["neat_packing"] is True
    packed = load_from_disk(config["tokenized_path"])["train"]
    rows = len(json.loads(Path(tiny["sft_alpaca"]).read_text()))
    assert 0 < len(packed) < rows
    assert max(max(mask) for mask in packed["attention_mask"]) > 1  # samples 1, 2, ... of one packed sequence
