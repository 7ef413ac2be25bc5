"""`lfw import`: a LLaMA-Factory YAML becomes a recipe that renders back to the same settings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lfw.cli import cli
from lfw.errors import UserError
from lfw.launch import Target
from lfw.lf_import import dataset_format, import_config
from lfw.recipe_loader import load_recipe
from lfw.render import render

LF_DATA = Path(__file__).resolve().parents[2] / "shared" / "lf-data"
ORIGINAL = {
    "model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507",
    "trust_remote_code": True,
    "stage": "sft",
    "do_train": True,
    "finetuning_type": "lora",
    "lora_rank": 8,
    "lora_target": "all",
    "dataset": "identity,alpaca_en_demo",
    "template": "qwen3_nothink",
    "cutoff_len": 2048,
    "max_samples": 1000,
    "overwrite_cache": True,
    "preprocessing_num_workers": 16,
    "dataloader_num_workers": 4,
    "output_dir": "saves/qwen3-4b/lora/sft",
    "logging_steps": 10,
    "save_steps": 500,
    "plot_loss": True,
    "report_to": "none",
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "learning_rate": 1.0e-4,
    "num_train_epochs": 3.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "ddp_timeout": 180000000,
    "swanlab_api_key": "sk-should-never-travel",
}


@pytest.fixture
def lf_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "qwen3_lora_sft.yaml"
    path.write_text(yaml.safe_dump({**ORIGINAL, "dataset_dir": str(LF_DATA)}))
    return path


@pytest.mark.parametrize("gpus", [1, 2, 4])
def test_round_trip_renders_the_same_settings(lf_yaml, tmp_path, gpus):
    imported = import_config(lf_yaml, gpus=gpus)
    recipe_path = tmp_path / "recipe.yml"
    recipe_path.write_text(imported.to_yaml(lf_yaml))
    loaded = load_recipe(str(recipe_path))
    target = Target("cuda", gpus)
    rendering = render(loaded, target, tmp_path / "run")
    config = yaml.safe_load(next(f.content for f in rendering.files if f.name == "1-sft.yaml"))
    for key in (
        "model_name_or_path",
        "trust_remote_code",
        "stage",
        "finetuning_type",
        "lora_rank",
        "lora_target",
        "template",
        "cutoff_len",
        "max_samples",
        "logging_steps",
        "save_steps",
        "learning_rate",
        "num_train_epochs",
        "lr_scheduler_type",
        "bf16",
        "per_device_train_batch_size",
        "dataloader_num_workers",
        "preprocessing_num_workers",
    ):
        assert config[key] == ORIGINAL[key], key
    assert config["gradient_accumulation_steps"] == 8  # the same global batch on as many GPUs as it ran on
    assert config["warmup_steps"] == 0.1  # transformers 5 spelling of the same ratio
    assert config["dataset"] == "identity,alpaca_en_demo"
    info = json.loads(rendering.files[0].content)
    assert info["identity"]["file_name"] == str(LF_DATA / "identity.json")
    assert "sk-should-never-travel" not in imported.to_yaml(lf_yaml)
    assert any("swanlab_api_key dropped" in note for note in imported.notes)


def test_formats_from_dataset_info_entries():
    info = json.loads((LF_DATA / "dataset_info.json").read_text())
    assert dataset_format(info["alpaca_en_demo"])[0] == "alpaca"
    assert dataset_format(info["mllm_demo"])[0] == "multimodal"
    assert dataset_format(info["glaive_toolcall_en_demo"]) == (
        "sharegpt",
        {"columns": {"messages": "conversations", "tools": "tools"}},
    )
    assert dataset_format({"formatting": "sharegpt", "ranking": True})[0] == "preference_sharegpt"
    assert (
        dataset_format({"formatting": "sharegpt", "columns": {"messages": "messages", "kto_tag": "label"}})[0] == "kto"
    )


def test_unknown_dataset_and_non_lf_yaml_are_clear_errors(tmp_path, lf_yaml):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**ORIGINAL, "dataset": "nope", "dataset_dir": str(LF_DATA)}))
    with pytest.raises(UserError, match="'nope' is not in"):
        import_config(bad)
    other = tmp_path / "other.yaml"
    other.write_text("a: 1\n")
    with pytest.raises(UserError, match="not a LLaMA-Factory train YAML"):
        import_config(other)


def test_cli_writes_new_file_only(runner, lf_yaml, tmp_path):
    out = tmp_path / "recipe.yml"
    assert runner.invoke(cli, ["import", str(lf_yaml), "-o", str(out)]).exit_code == 0
    assert load_recipe(str(out)).recipe.training.global_batch_size == 8
    again = runner.invoke(cli, ["import", str(lf_yaml), "-o", str(out)])
    assert again.exit_code == 2 and "exists" in again.output


def test_llamafactorys_own_quantization_method_imports_and_renders_back(tmp_path: Path):
    """LF's value is `bnb`; the import once refused it and the render once wrote `bitsandbytes`, which LF ignores."""
    (tmp_path / "alpaca.json").write_text('[{"instruction": "a", "input": "", "output": "b"}]')
    (tmp_path / "dataset_info.json").write_text('{"demo": {"file_name": "alpaca.json"}}')
    original = {
        "model_name_or_path": "Qwen/Qwen3-4B", "template": "qwen3_nothink", "stage": "sft", "do_train": True,
        "finetuning_type": "lora", "quantization_bit": 4, "quantization_method": "bnb", "dataset": "demo",
        "dataset_dir": str(tmp_path), "output_dir": "saves/q", "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 4,
    }  # fmt: skip
    lf_yaml = tmp_path / "qlora.yaml"
    lf_yaml.write_text(yaml.safe_dump(original))
    recipe_path = tmp_path / "recipe.yml"
    recipe_path.write_text(import_config(lf_yaml, gpus=1).to_yaml(lf_yaml))
    rendering = render(load_recipe(str(recipe_path)), Target("cpu", 1), tmp_path / "run")
    config = yaml.safe_load(rendering.files[-1].content)
    assert config["quantization_bit"] == 4 and config["quantization_method"] == "bnb"
    assert config["finetuning_type"] == "lora"
