"""Recipe schema and loader: errors name file, line, key and fix; all errors at once; extends and --set."""

from __future__ import annotations

import pytest

from lfw.infra.errors import UserError
from lfw.recipe.loader import load_recipe
from tests.conftest import minimal_recipe


def errors_of(path) -> str:
    with pytest.raises(UserError) as info:
        load_recipe(str(path))
    return info.value.render()


def test_minimal_recipe_loads_with_defaults(write_recipe):
    loaded = load_recipe(str(write_recipe(minimal_recipe())))
    assert loaded.recipe.method.type == "lora"
    assert loaded.recipe.training.global_batch_size == 8
    assert loaded.recipe.hardware.deepspeed == "none"


def test_unknown_key_names_path_line_and_closest_key(write_recipe):
    text = (
        "name: t\nmodel:\n  path: m\n  templat: chatml\n"
        "stages:\n  - stage: sft\n    datasets: [{path: d.json, format: alpaca}]\n"
    )
    message = errors_of(write_recipe(text))
    assert "recipe.yml:4 model.templat: unknown key" in message
    assert "did you mean 'template'?" in message
    assert "model.template: required key is missing" in message


def test_every_error_reported_at_once(write_recipe):
    recipe = minimal_recipe(trainin={}, hardware={"gpus": 0, "deepspeed": "z4"})
    recipe["stages"][0]["datasets"][0]["format"] = "alpacca"
    message = errors_of(write_recipe(recipe))
    for expected in (
        "trainin: unknown key",
        "did you mean 'training'?",
        "hardware.gpus",
        "hardware.deepspeed",
        "stages[0].datasets[0].format",
    ):
        assert expected in message
    assert message.count("\n  - ") == 4


def test_stage_and_format_must_fit(write_recipe):
    recipe = minimal_recipe(stages=[{"stage": "dpo", "datasets": [{"path": "d.json", "format": "alpaca"}]}])
    assert "stage dpo cannot train on format 'alpaca'; use one of preference" in errors_of(write_recipe(recipe))


def test_qlora_defaults_to_4bit_and_full_refuses_quantization(write_recipe):
    loaded = load_recipe(str(write_recipe(minimal_recipe(method={"type": "qlora"}))))
    assert loaded.recipe.method.quantization.bits == 4
    bad = minimal_recipe(method={"type": "full", "quantization": {"bits": 8}})
    assert "use method.type: qlora" in errors_of(write_recipe(bad))


def test_yaml_syntax_error_names_line(write_recipe):
    message = errors_of(write_recipe("name: t\nmodel: {path: a\nstages: []\n"))
    assert "recipe.yml:3" in message and "invalid YAML" in message


def test_non_mapping_document(write_recipe):
    assert "a recipe is a YAML mapping, got list" in errors_of(write_recipe("- a\n- b\n"))


def test_set_overrides_nested_and_list_items(write_recipe):
    path = write_recipe(minimal_recipe())
    loaded = load_recipe(
        str(path), ["training.learning_rate=2e-5", "stages.0.training.max_steps=3", "hardware.deepspeed=z3"]
    )
    assert loaded.recipe.training.learning_rate == 2e-5
    assert loaded.recipe.stage_training(0).max_steps == 3
    assert loaded.recipe.hardware.deepspeed == "z3"
    with pytest.raises(UserError, match="no list item '5'"):
        load_recipe(str(path), ["stages.5.stage=dpo"])
    with pytest.raises(UserError, match="expected key=value"):
        load_recipe(str(path), ["training.learning_rate"])


def test_extends_merges_and_detects_cycles(write_recipe):
    write_recipe(minimal_recipe(training={"global_batch_size": 16, "max_steps": 9}), "base.yml")
    child = write_recipe({"extends": "base.yml", "name": "child", "training": {"max_steps": 4}}, "child.yml")
    loaded = load_recipe(str(child))
    assert loaded.recipe.name == "child"
    assert loaded.recipe.training.global_batch_size == 16 and loaded.recipe.training.max_steps == 4
    assert [p.name for p in loaded.chain] == ["child.yml", "base.yml"]
    write_recipe({"extends": "b.yml", "name": "a"}, "a.yml")
    write_recipe({"extends": "a.yml", "name": "b"}, "b.yml")
    assert "extends forms a cycle" in errors_of(write_recipe({"extends": "a.yml"}, "c.yml"))


def test_stage_overrides_merge_over_training(write_recipe):
    recipe = minimal_recipe()
    recipe["stages"].append(
        {
            "stage": "dpo",
            "datasets": [{"path": "p.json", "format": "preference"}],
            "training": {"learning_rate": 5e-6},
        }
    )
    loaded = load_recipe(str(write_recipe(recipe)))
    assert loaded.recipe.stage_training(1).learning_rate == 5e-6
    assert loaded.recipe.stage_training(1).global_batch_size == 8


def test_passthrough_checked_against_llamafactory_keys(write_recipe):
    ok = load_recipe(str(write_recipe(minimal_recipe(llamafactory={"neftune_noise_alpha": 5}))))
    assert ok.recipe.llamafactory == {"neftune_noise_alpha": 5}
    message = errors_of(write_recipe(minimal_recipe(llamafactory={"neftune_noise_alfa": 5, "swanlab_api_key": "x"})))
    assert "llamafactory.neftune_noise_alfa: not an argument of LLaMA-Factory" in message
    assert "did you mean 'neftune_noise_alpha'?" in message
    assert "llamafactory.swanlab_api_key: secrets are never written" in message
    assert "SWANLAB_API_KEY" in message


def test_bundled_recipe_by_name():
    loaded = load_recipe("recipes/qwen3_14b_qlora_4gpu.yml")
    assert loaded.is_bundled and loaded.display_path == "recipes/qwen3_14b_qlora_4gpu.yml"
    with pytest.raises(UserError, match="recipe file not found"):
        load_recipe("recipes/nope.yml")


def test_duplicate_keys_are_an_error_naming_file_line_and_key(write_recipe):
    text = (
        "name: t\nmodel: {path: m, template: chatml}\ntraining:\n  max_steps: 5\n"
        "stages:\n  - stage: sft\n    datasets: [{path: d.json, format: alpaca}]\n"
        "training:\n  learning_rate: 2.0e-5\n"
    )
    message = errors_of(write_recipe(text))
    assert "recipe.yml:8 training: invalid YAML: duplicate key 'training' (first on line 3)" in message
    assert "keep one 'training'" in message
    nested = "name: t\nmodel:\n  path: m\n  template: chatml\n  path: n\nstages: []\n"
    assert "recipe.yml:5 path: invalid YAML: duplicate key 'path' (first on line 3)" in errors_of(write_recipe(nested))


def test_merge_keys_may_still_override(write_recipe):
    text = (
        "name: t\nbase: &base {path: Qwen/Qwen3-0.6B, template: chatml}\n"
        "stages: [{stage: sft, datasets: [{path: d.json, format: alpaca}]}]\n"
        "model:\n  <<: *base\n  template: qwen3_nothink\n"
    )
    with pytest.raises(UserError, match="base: unknown key"):  # the anchor holder is no recipe key; no duplicate
        load_recipe(str(write_recipe(text)))


def test_extends_resolves_each_files_paths_against_its_own_folder(tmp_path, write_recipe):
    base_dir = tmp_path / "base"
    (base_dir / "data").mkdir(parents=True)
    (base_dir / "model").mkdir()
    base = minimal_recipe(model={"path": "./model", "template": "qwen3_nothink"})
    base["stages"][0]["datasets"][0].update(path="data/base.json", media_dir="data")
    write_recipe(base, "base/base.yml")
    child = write_recipe({"extends": "base/base.yml", "name": "child"}, "child.yml")
    loaded = load_recipe(str(child))
    assert loaded.recipe.model.path == str(base_dir / "model")
    spec = loaded.recipe.stages[0].datasets[0]
    assert spec.path == str(base_dir / "data" / "base.json") and spec.media_dir == str(base_dir / "data")
    # The child's own paths stay relative to the child; hub ids stay hub ids.
    override = {"extends": "base/base.yml", "model": {"path": "Qwen/Qwen3-0.6B"}}
    override["stages"] = [{"stage": "sft", "datasets": [{"path": "mine.json", "format": "alpaca"}]}]
    loaded = load_recipe(str(write_recipe(override, "child2.yml")))
    assert loaded.recipe.model.path == "Qwen/Qwen3-0.6B"
    assert loaded.recipe.stages[0].datasets[0].path == str(tmp_path / "mine.json")


def test_extends_base_paths_reach_the_rendered_dataset_info(tmp_path, write_recipe):
    import json

    from lfw.launch.target import Target
    from lfw.rendering.render import render

    (tmp_path / "base").mkdir()
    write_recipe(minimal_recipe(), "base/base.yml")
    loaded = load_recipe(str(write_recipe({"extends": "base/base.yml", "name": "child"}, "child.yml")))
    files = {f.name: f.content for f in render(loaded, Target("cpu", 1), tmp_path / "run").files}
    assert json.loads(files["dataset_info.json"])["data"]["file_name"] == str(tmp_path / "base" / "data.json")
