"""Rendering: golden files for every bundled recipe, determinism, batch arithmetic, precision, DeepSpeed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from lfw.infra.errors import UserError
from lfw.infra.hardware import GPU
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.recipe.schema import HardwareSpec
from lfw.rendering.render import render
from tests.conftest import GOLDEN, REPO, bundled_targets, minimal_recipe

RUN_DIR = Path("/RUN")
A100 = GPU(0, "NVIDIA A100-SXM4-80GB", 81920, 8.0)
T4 = GPU(0, "Tesla T4", 15360, 7.5)


def gpu_target(count: int, gpu: GPU | None = A100, nnodes: int = 1) -> Target:
    gpus = tuple(GPU(i, gpu.name, gpu.memory_mib, gpu.compute_capability) for i in range(count)) if gpu else ()
    return Target("cuda", count, nnodes=nnodes, gpus=gpus)


def normalized(text: str) -> str:
    """Golden files must not depend on where the checkout or the current directory is. The tokenized-cache key
    hashes the data's content and, for media, its folder (tests/rendering/test_tokenized.py pins what goes into it)."""
    text = text.replace(str(Path.cwd()), "<CWD>").replace(str(REPO), "<REPO>")
    return re.sub(r"(\.tokenized/)[0-9a-f]{32}", r"\1<KEY>", text)


@pytest.mark.parametrize("path,target", list(bundled_targets()), ids=lambda v: getattr(v, "stem", ""))
def test_bundled_recipes_match_golden(path: Path, target: Target, update_golden: bool, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("LFW_CPUS", "16")  # the worker defaults follow the CPU count
    monkeypatch.delenv("LFW_GPU_MEM_GIB", raising=False)
    rendering = render(load_recipe(str(path)), target, RUN_DIR)
    golden_dir = GOLDEN / path.stem
    for item in rendering.files:
        golden = golden_dir / item.name
        if update_golden:
            golden_dir.mkdir(parents=True, exist_ok=True)
            golden.write_text(normalized(item.content))
        assert golden.is_file(), f"no golden file {golden}; run pytest --update-golden"
        assert normalized(item.content) == golden.read_text(), f"{item.name} differs from {golden}"
    assert sorted(p.name for p in golden_dir.iterdir()) == sorted(f.name for f in rendering.files)


def test_rendering_is_deterministic_and_starts_with_header():
    loaded = load_recipe("recipes/qwen3_14b_qlora_4gpu.yml")
    first = render(loaded, gpu_target(4), RUN_DIR)
    second = render(load_recipe("recipes/qwen3_14b_qlora_4gpu.yml"), gpu_target(4), RUN_DIR)
    assert first == second
    config = next(f for f in first.files if f.name.endswith(".yaml")).content
    assert config.startswith("# Rendered by lfw 0.1.0 from recipes/qwen3_14b_qlora_4gpu.yml")


def stage_config(rendering, index: int = 0) -> dict:
    return yaml.safe_load(next(f for f in rendering.files if f.name == rendering.stages[index].config).content)


@pytest.mark.parametrize("gpus,accum", [(1, 16), (2, 8), (4, 4), (8, 2), (16, 1)])
def test_global_batch_held_across_gpu_counts(gpus: int, accum: int):
    loaded = load_recipe("recipes/qwen3_14b_qlora_4gpu.yml")  # global 32, micro 2
    config = stage_config(render(loaded, gpu_target(gpus), RUN_DIR))
    assert config["gradient_accumulation_steps"] == accum
    assert config["per_device_train_batch_size"] * accum * gpus == 32


def test_global_batch_across_nodes_and_indivisible():
    loaded = load_recipe("recipes/qwen3_14b_qlora_4gpu.yml")
    assert stage_config(render(loaded, gpu_target(4, nnodes=2), RUN_DIR))["gradient_accumulation_steps"] == 2
    with pytest.raises(UserError) as info:
        render(loaded, gpu_target(3), RUN_DIR)
    message = info.value.render()
    assert "global_batch_size" in message and "not divisible" in message and "use global_batch_size 30 or 36" in message


def test_precision_follows_gpu_capability(write_recipe):
    loaded = load_recipe(str(write_recipe(minimal_recipe(hardware={"gpus": 2}))))
    assert stage_config(render(loaded, gpu_target(2, A100), RUN_DIR))["bf16"] is True
    on_t4 = stage_config(render(loaded, gpu_target(2, T4), RUN_DIR))
    assert on_t4["fp16"] is True and on_t4["bf16"] is False
    forced = load_recipe(str(write_recipe(minimal_recipe(hardware={"gpus": 2}))), ["training.precision=bf16"])
    with pytest.raises(UserError, match="Tesla T4 cannot do bf16"):
        render(forced, gpu_target(2, T4), RUN_DIR)
    cpu = stage_config(render(load_recipe(str(write_recipe(minimal_recipe()))), Target("cpu", 1), RUN_DIR))
    assert cpu["use_cpu"] is True and cpu["bf16"] is False and cpu["fp16"] is False
    cpu_bf16 = load_recipe(str(write_recipe(minimal_recipe())), ["training.precision=bf16"])
    assert stage_config(render(cpu_bf16, Target("cpu", 1), RUN_DIR))["bf16"] is True  # autocast works on CPU


def test_deepspeed_json_per_stage_choice(write_recipe):
    for kind, stage, offload in (
        ("z0", 0, False),
        ("z2", 2, False),
        ("z3", 3, False),
        ("z3_offload", 3, True),
    ):
        loaded = load_recipe(str(write_recipe(minimal_recipe(hardware={"gpus": 2, "deepspeed": kind}))))
        rendering = render(loaded, gpu_target(2), RUN_DIR)
        ds = json.loads(next(f for f in rendering.files if f.name == f"ds_{kind}.json").content)
        assert ds["zero_optimization"]["stage"] == stage
        assert ("offload_param" in ds["zero_optimization"]) is offload
        assert stage_config(rendering)["deepspeed"] == f"/RUN/ds_{kind}.json"


def test_dataset_info_absolute_paths_and_formats(write_recipe, tmp_path):
    recipe = minimal_recipe(model={"path": "Qwen/Qwen2-VL-2B-Instruct", "template": "qwen2_vl"})
    recipe["stages"][0]["datasets"] = [
        {"path": "a.json", "format": "sharegpt", "tags": "role_content"},
        {"path": "sub/b.jsonl", "format": "openai"},
        {"path": "imgs/mm.json", "format": "multimodal"},
    ]
    recipe["stages"].append({"stage": "dpo", "datasets": [{"path": "a.json", "format": "preference", "name": "prefs"}]})
    rendering = render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    info = json.loads(rendering.files[0].content)
    assert info["a"]["file_name"] == str(tmp_path / "a.json")
    assert info["a"]["tags"]["role_tag"] == "role"
    assert info["b"]["columns"]["messages"] == "messages"
    assert info["prefs"]["ranking"] is True
    first, second = stage_config(rendering, 0), stage_config(rendering, 1)
    assert first["dataset"] == "a,b,mm" and first["dataset_dir"] == "/RUN"
    assert first["media_dir"] == str(tmp_path / "imgs")
    assert second["dataset"] == "prefs"


def test_later_stage_stacks_on_previous(write_recipe):
    recipe = minimal_recipe()
    recipe["stages"].append(
        {"stage": "dpo", "pref_beta": 0.1, "datasets": [{"path": "p.json", "format": "preference"}]}
    )
    lora = render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    dpo = stage_config(lora, 1)
    assert dpo["adapter_name_or_path"] == "/RUN/1-sft" and dpo["create_new_adapter"] is True
    qlora = render(load_recipe(str(write_recipe(recipe)), ["method.type=qlora"]), Target("cpu", 1), RUN_DIR)
    dpo = stage_config(qlora, 1)
    assert "create_new_adapter" not in dpo  # LLaMA-Factory refuses a new adapter on a quantized base
    assert dpo["ref_model_adapters"] == "/RUN/1-sft" and dpo["ref_model_quantization_bit"] == 4
    full = render(load_recipe(str(write_recipe(recipe)), ["method.type=full"]), Target("cpu", 1), RUN_DIR)
    assert stage_config(full, 1)["model_name_or_path"] == "/RUN/1-sft"


def test_third_stage_stacks_every_earlier_adapter(write_recipe):
    recipe = minimal_recipe()
    recipe["stages"] += [
        {"stage": "dpo", "datasets": [{"path": "p.json", "format": "preference"}]},
        {"stage": "kto", "datasets": [{"path": "k.json", "format": "kto"}]},
    ]
    lora = render(load_recipe(str(write_recipe(recipe))), Target("cpu", 1), RUN_DIR)
    assert stage_config(lora, 2)["adapter_name_or_path"] == "/RUN/1-sft,/RUN/2-dpo"
    qlora = render(load_recipe(str(write_recipe(recipe)), ["method.type=qlora"]), Target("cpu", 1), RUN_DIR)
    assert stage_config(qlora, 2)["adapter_name_or_path"] == "/RUN/2-dpo"  # the one adapter, trained on
    full = render(load_recipe(str(write_recipe(recipe)), ["method.type=full"]), Target("cpu", 1), RUN_DIR)
    assert stage_config(full, 2)["model_name_or_path"] == "/RUN/2-dpo"


def test_passthrough_cannot_shadow_rendered_keys(write_recipe):
    with pytest.raises(
        UserError,
        match="llamafactory.learning_rate: lfw renders this key itself\n    fix: set it with training.learning_rate",
    ):
        load_recipe(str(write_recipe(minimal_recipe(llamafactory={"learning_rate": 1.0}))))
    extra = load_recipe(str(write_recipe(minimal_recipe(llamafactory={"neftune_noise_alpha": 5}))))
    assert stage_config(render(extra, Target("cpu", 1), RUN_DIR))["neftune_noise_alpha"] == 5


def test_swanlab_renders_without_any_key(write_recipe, monkeypatch):
    monkeypatch.setenv("SWANLAB_API_KEY", "sk-secret-value")
    loaded = load_recipe(str(write_recipe(minimal_recipe(tracking={"swanlab": {"project": "p", "mode": "local"}}))))
    rendering = render(loaded, Target("cpu", 1), RUN_DIR)
    config = stage_config(rendering)
    assert config["use_swanlab"] is True and config["swanlab_mode"] == "local"
    assert all("sk-secret-value" not in f.content for f in rendering.files)


def test_hardware_gpu_count_beyond_visible_is_refused():
    from lfw.launch.target import resolve_target

    with pytest.raises(UserError, match="4 GPUs asked for but 2 visible"):
        resolve_target(HardwareSpec(gpus=4), env={}, detected=[A100, A100])
