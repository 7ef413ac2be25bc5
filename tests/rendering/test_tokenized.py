"""Tokenize once: the cache key follows what changes the tokens, LLaMA-Factory really loads the cached set on the
second run, and a half-written folder is never used."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from lfw.cli import main
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import render
from lfw.rendering.tokenized import MARKER, is_complete, prepare
from tests.conftest import tiny_recipe

RUN_DIR = Path("/RUN/t/stamp")


@pytest.fixture(autouse=True)
def _no_env_cache(monkeypatch):
    monkeypatch.delenv("LFW_CACHE_DIR", raising=False)


def stage_config(recipe: dict, tmp_path: Path, index: int = 0) -> dict:
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    rendering = render(load_recipe(str(path)), Target("cpu", 1), RUN_DIR)
    return yaml.safe_load(next(f.content for f in rendering.files if f.name == rendering.stages[index].config))


def key(recipe: dict, tmp_path: Path, index: int = 0) -> str:
    return Path(stage_config(recipe, tmp_path, index)["tokenized_path"]).name


def test_no_forced_overwrite_and_cache_beside_the_runs(tiny, tmp_path, monkeypatch):
    config = stage_config(tiny_recipe(tiny), tmp_path)
    assert "overwrite_cache" not in config
    assert Path(config["tokenized_path"]).parent == Path("/RUN/.tokenized")
    monkeypatch.setenv("LFW_CACHE_DIR", str(tmp_path / "cache"))
    assert Path(stage_config(tiny_recipe(tiny), tmp_path)["tokenized_path"]).parent == tmp_path / "cache" / "tokenized"


TOKEN_CHANGES = {
    "cutoff_len": lambda r, t, p: r["training"].update(cutoff_len=64),
    "template": lambda r, t, p: r["model"].update(template="qwen3"),
    "plain packing": lambda r, t, p: r["training"].update(packing=True),
    "neat packing": lambda r, t, p: r["training"].update(packing="neat"),
    "max_samples": lambda r, t, p: r["training"].update(max_samples=10),
    "val_size": lambda r, t, p: r["training"].update(val_size=0.1),
    "stage": lambda r, t, p: r["stages"][0].update(stage="pt"),
    "passthrough train_on_prompt": lambda r, t, p: r.update(llamafactory={"train_on_prompt": True}),
    "passthrough neat_packing": lambda r, t, p: r.update(llamafactory={"neat_packing": True}),
    "data content": lambda r, t, p: _edited_data(r, t, p),
    "tokenizer file": lambda r, t, p: _edited_tokenizer(r, t, p),
}
SAME_TOKENS = {
    "learning_rate": lambda r, t, p: r["training"].update(learning_rate=1e-4),
    "max_steps": lambda r, t, p: r["training"].update(max_steps=3),
    "micro_batch_size": lambda r, t, p: r["training"].update(micro_batch_size=2),
    "seed without val_size": lambda r, t, p: r["training"].update(seed=7),
    "lora rank": lambda r, t, p: r["method"]["lora"].update(rank=4),
    "data moved, same content": lambda r, t, p: _moved_data(r, t, p),
    "model weights": lambda r, t, p: _edited_weights(r, t, p),
}


def _data_copy(recipe: dict, tmp_path: Path, name: str) -> Path:
    copy = tmp_path / name / "sft.json"
    copy.parent.mkdir(exist_ok=True)
    shutil.copy(recipe["stages"][0]["datasets"][0]["path"], copy)
    recipe["stages"][0]["datasets"][0]["path"] = str(copy)
    return copy


def _moved_data(recipe: dict, tiny, tmp_path: Path) -> None:
    _data_copy(recipe, tmp_path, "moved")


def _edited_data(recipe: dict, tiny, tmp_path: Path) -> None:
    copy = _data_copy(recipe, tmp_path, "edited")
    rows = json.loads(copy.read_text())
    rows[0]["output"] += " (edited)"
    copy.write_text(json.dumps(rows))


def _edited_tokenizer(recipe: dict, tiny, tmp_path: Path) -> None:
    model = tmp_path / "model-tok"
    shutil.copytree(tiny["model"], model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["model_max_length"] = 12345
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    recipe["model"]["path"] = str(model)


def _edited_weights(recipe: dict, tiny, tmp_path: Path) -> None:
    model = tmp_path / "model-weights"
    shutil.copytree(tiny["model"], model)
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes() + b"\0")  # other bytes, same tokenizer
    recipe["model"]["path"] = str(model)


@pytest.mark.parametrize("change", sorted(TOKEN_CHANGES), ids=str)
def test_key_changes_with_what_changes_tokens(tiny, tmp_path, change):
    recipe = tiny_recipe(tiny)
    base = key(recipe, tmp_path)
    TOKEN_CHANGES[change](recipe, tiny, tmp_path)
    assert key(recipe, tmp_path) != base


@pytest.mark.parametrize("change", sorted(SAME_TOKENS), ids=str)
def test_key_ignores_what_does_not(tiny, tmp_path, change):
    recipe = tiny_recipe(tiny)
    base = key(recipe, tmp_path)
    SAME_TOKENS[change](recipe, tiny, tmp_path)
    assert key(recipe, tmp_path) == base


def test_seed_and_workers_count_when_they_pick_rows_or_bins(tiny, tmp_path):
    split = tiny_recipe(tiny, training={**tiny_recipe(tiny)["training"], "val_size": 0.1})
    base = key(split, tmp_path)
    split["training"]["seed"] = 7  # LF splits before it saves: another seed, other validation rows
    assert key(split, tmp_path) != base
    for packing, differs in (("neat", True), (True, True), (False, False)):
        recipe = tiny_recipe(tiny, training={**tiny_recipe(tiny)["training"], "packing": packing})
        recipe["training"]["preprocessing_workers"] = 3
        base = key(recipe, tmp_path)
        recipe["training"]["preprocessing_workers"] = 2  # LF packs within each worker's shard
        assert (key(recipe, tmp_path) != base) is differs, packing


def test_stages_on_the_same_data_share_one_folder(tiny, tmp_path):
    recipe = tiny_recipe(tiny)
    recipe["stages"].append({**recipe["stages"][0], "training": {"learning_rate": 1e-4}})
    assert key(recipe, tmp_path, 0) == key(recipe, tmp_path, 1)


def _rows(folder: Path) -> list[dict]:
    from datasets import load_from_disk

    return load_from_disk(str(folder))["train"].to_list()


@pytest.mark.slow
def test_second_run_loads_the_tokenized_set(tiny, tmp_path, offline_env):
    recipe = tiny_recipe(tiny)
    recipe["training"].update(max_steps=1, save_steps=1)
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    root = tmp_path / "runs"
    assert main(["run", str(path), "--output-dir", str(root)]) == 0
    assert main(["run", str(path), "--output-dir", str(root)]) == 0
    first, second = sorted((root / "e2e").iterdir())
    folder = Path(yaml.safe_load((second / "1-sft.yaml").read_text())["tokenized_path"])
    assert folder.parent == root / ".tokenized" and is_complete(folder)
    assert (first / "logs" / "1-sft.tokenize.log").is_file()  # the first run tokenized ...
    assert not (second / "logs" / "1-sft.tokenize.log").exists()  # ... the second did not
    for run in (first, second):
        assert f"Loaded tokenized dataset from {folder}." in (run / "logs" / "1-sft.log").read_text()

    # LF tokenizing the same config afresh (no cache) gives the very rows the runs trained on.
    fresh_config = tmp_path / "fresh.yaml"
    config = yaml.safe_load((second / "1-sft.yaml").read_text())
    fresh_config.write_text(yaml.safe_dump({**config, "tokenized_path": str(tmp_path / "fresh")}))
    fresh, tokenized = prepare(fresh_config, tmp_path / "fresh.log")
    assert tokenized and _rows(fresh) == _rows(folder) and len(_rows(folder)) > 0


@pytest.mark.slow
def test_half_written_folder_is_never_used(tiny, tmp_path, offline_env):
    recipe = tiny_recipe(tiny)
    recipe["training"]["max_samples"] = 16
    run_dir = tmp_path / "runs" / "e2e" / "stamp"
    path = tmp_path / "recipe.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    render(load_recipe(str(path)), Target("cpu", 1), run_dir).write(run_dir)
    folder = Path(yaml.safe_load((run_dir / "1-sft.yaml").read_text())["tokenized_path"])
    # What an interrupted save_to_disk leaves: LF would load any non-empty folder, lfw must not.
    (folder / "train").mkdir(parents=True)
    (folder / "dataset_dict.json").write_text('{"splits": ["train"]}')
    assert not is_complete(folder)
    done, tokenized = prepare(run_dir / "1-sft.yaml", tmp_path / "log")
    assert done == folder and tokenized and is_complete(folder) and (folder / MARKER).is_file()
    assert len(_rows(folder)) == 16
    assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name or ".stale-" in p.name]
    assert prepare(run_dir / "1-sft.yaml", tmp_path / "log") == (folder, False)  # complete: reused
