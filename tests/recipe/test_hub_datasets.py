"""Hub datasets in recipes (`id:` in place of `path:`): validated, rendered as hf_hub_url / ms_hub_url entries,
checked by `lfw run` from the local datasets cache, and read row for row by LLaMA-Factory's own loader offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lfw.infra.errors import UserError
from lfw.launch.runner import preflight
from lfw.launch.target import Target
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import build_dataset_info, render
from tests.conftest import REPO, clean_env, minimal_recipe, tiny_recipe

ALPACA = [
    {"instruction": "Capital of France?", "input": "", "output": "Paris", "system": "Answer in one word."},
    {"instruction": "2+2?", "input": "", "output": "4", "system": ""},
    {"instruction": "Colour of the sky?", "input": "at noon", "output": "Blue", "system": "Be brief."},
]
CHAT = [
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"conversations": [{"from": "human", "value": "Bye"}, {"from": "gpt", "value": "See you"}]},
]


def cache_hub_dataset(hf_home: Path, repo_id: str, rows: list[dict], subset: str = "default") -> None:
    """Put `rows` where `datasets.load_dataset(repo_id, name=subset)` finds them offline: the prepared-dataset
    cache (HF_DATASETS_CACHE/org___name/<config>/<version>/<hash>) that a hub download leaves behind."""
    from datasets.packaged_modules.json.json import Json

    cache = hf_home / "datasets"
    source = hf_home / "src" / f"{repo_id.replace('/', '_')}_{subset}.jsonl"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    builder = Json(
        cache_dir=str(cache),
        dataset_name=repo_id.split("/")[1],
        repo_id=repo_id,
        config_name=subset,
        data_files={"train": str(source)},
    )
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)  # .../org___name/<subset>-<files hash>/0.0.0
    target = cache / repo_id.replace("/", "___") / subset / prepared.name / "0123456789abcdef"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(prepared), str(target))
    shutil.rmtree(prepared.parent)


@pytest.fixture
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face home of this test only."""
    home = tmp_path / "hf"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return home


def _load(write_recipe, datasets: list[dict], stage: str = "sft"):
    return load_recipe(str(write_recipe(minimal_recipe(stages=[{"stage": stage, "datasets": datasets}]))))


@pytest.mark.parametrize(
    ("dataset", "expected"),
    [
        ({"format": "alpaca"}, "exactly one of path (local file or folder) or id (hub dataset"),
        ({"path": "data.json", "id": "org/data", "format": "alpaca"}, "exactly one of path"),
        ({"path": "data.json", "split": "test", "format": "alpaca"}, "split belong to a hub dataset (id:)"),
        ({"path": "data.json", "hub": "ms", "format": "alpaca"}, "hub belong to a hub dataset"),
        ({"id": "org/data", "hub": "om", "format": "alpaca"}, "hub"),
    ],
)
def test_a_dataset_names_one_source(write_recipe, dataset: dict, expected: str) -> None:
    with pytest.raises(UserError) as info:
        _load(write_recipe, [dataset])
    message = info.value.render()
    assert expected in message and "stages[0].datasets[0]" in message, message


def test_uncached_hub_data_renders_from_the_format_defaults(write_recipe, hf_home: Path) -> None:
    datasets = [
        {"id": "org/chat-data", "format": "sharegpt", "subset": "en", "split": "train[:50%]", "folder": "v2"},
        {"id": "org/qa", "hub": "ms", "format": "alpaca", "columns": {"prompt": "question", "response": "answer"}},
        {"id": "org/chat-data", "format": "openai", "name": "chat_openai"},
    ]
    info, names = build_dataset_info(_load(write_recipe, datasets))
    assert names == [["chat-data_en", "qa", "chat_openai"]]
    assert info["chat-data_en"] == {
        "hf_hub_url": "org/chat-data",
        "subset": "en",
        "split": "train[:50%]",
        "folder": "v2",
        "formatting": "sharegpt",
    }
    assert info["qa"] == {
        "ms_hub_url": "org/qa",
        "columns": {"prompt": "question", "query": "input", "response": "answer"},
    }
    assert info["chat_openai"]["hf_hub_url"] == "org/chat-data" and info["chat_openai"]["tags"]["role_tag"] == "role"


def test_cached_hub_data_registers_the_columns_its_rows_have(write_recipe, hf_home: Path) -> None:
    cache_hub_dataset(hf_home, "lfw-test/tiny_alpaca", ALPACA)
    info, _ = build_dataset_info(_load(write_recipe, [{"id": "lfw-test/tiny_alpaca", "format": "alpaca"}]))
    assert info["tiny_alpaca"] == {
        "hf_hub_url": "lfw-test/tiny_alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
    }


def test_preflight_checks_cached_hub_rows_and_warns_when_it_cannot(write_recipe, hf_home: Path) -> None:
    bad = [*ALPACA, {"instruction": "empty answer", "input": "", "output": ""}]
    cache_hub_dataset(hf_home, "lfw-test/bad_alpaca", bad)
    loaded = _load(write_recipe, [{"id": "lfw-test/bad_alpaca", "format": "alpaca"}])
    with pytest.raises(UserError) as info:
        preflight(loaded, Target("cpu", 1), clean_env())
    message = info.value.render()
    assert "stages[0].datasets[0]" in message and "lfw-test/bad_alpaca row 4" in message, message

    cache_hub_dataset(hf_home, "lfw-test/tiny_alpaca", ALPACA)
    good = _load(write_recipe, [{"id": "lfw-test/tiny_alpaca", "format": "alpaca"}])
    assert not [w for w in preflight(good, Target("cpu", 1), clean_env()) if "tiny_alpaca" in w]  # checked, clean

    missing = _load(write_recipe, [{"id": "lfw-test/not-cached", "format": "alpaca"}])
    warnings = preflight(missing, Target("cpu", 1), clean_env())
    assert any("hub dataset lfw-test/not-cached not checked" in w for w in warnings), warnings
    rendering = render(missing, Target("cpu", 1), hf_home.parent / "run")  # rendered either way
    assert '"hf_hub_url": "lfw-test/not-cached"' in rendering.files[0].content


# LLaMA-Factory's loader on the rendered stage YAMLs (the judge), in a subprocess that reads the cache offline.
LF_LOAD = """
import json, sys, yaml
sys.path.insert(0, sys.argv[1])
from tests.rendering.oracle_worker import aligned_rows
from llamafactory.hparams import get_train_args
results = {}
for path in sys.argv[2:]:
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(yaml.safe_load(open(path)))
    results[path] = aligned_rows(model_args, data_args, training_args, finetuning_args.stage)
print("RESULTS=" + json.dumps(results))
"""


@pytest.mark.slow
def test_llamafactory_loads_the_rendered_hub_entries_offline(tmp_path: Path, tiny, write_recipe, hf_home) -> None:
    cache_hub_dataset(hf_home, "lfw-test/tiny_alpaca", ALPACA)
    cache_hub_dataset(hf_home, "lfw-test/multi", CHAT, subset="chat")
    datasets = [
        {"id": "lfw-test/tiny_alpaca", "format": "alpaca"},
        {"id": "lfw-test/multi", "subset": "chat", "split": "train", "format": "sharegpt"},
    ]
    recipe = tiny_recipe(tiny, stages=[{"stage": "sft", "datasets": datasets}])
    loaded = load_recipe(str(write_recipe(recipe)))
    run_dir = tmp_path / "run"
    rendering = render(loaded, Target("cpu", 1), run_dir)
    rendering.write(run_dir)
    config = run_dir / rendering.stages[0].config
    assert yaml.safe_load(config.read_text())["dataset"] == "tiny_alpaca,multi_chat"
    proc = subprocess.run(
        [sys.executable, "-c", LF_LOAD, str(REPO), str(config)],
        capture_output=True,
        text=True,
        env={**clean_env(), "TOKENIZERS_PARALLELISM": "false"},
        timeout=600,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS=")]
    assert lines, proc.stderr[-3000:]
    rows = json.loads(lines[-1].removeprefix("RESULTS="))[str(config)]
    alpaca, chat = rows["lfw-test/tiny_alpaca"], rows["lfw-test/multi"]
    assert [row["_system"] for row in alpaca] == ["Answer in one word.", "", "Be brief."]  # the column arrived
    assert [row["_response"][0]["content"] for row in alpaca] == ["Paris", "4", "Blue"]
    assert alpaca[2]["_prompt"][0]["content"] == "Colour of the sky?\nat noon"
    assert [row["_response"][0]["content"] for row in chat] == ["Hello", "See you"]


def test_import_maps_hub_entries_to_recipe_fields(tmp_path: Path, write_recipe, hf_home) -> None:
    from lfw.recipe.lf_import import import_config

    data = tmp_path / "data"
    data.mkdir()
    registry = {
        "chat": {"hf_hub_url": "org/chat", "subset": "en", "split": "test", "formatting": "sharegpt"},
        "ms_only": {"ms_hub_url": "org/ms-qa", "columns": {"prompt": "q", "response": "a"}},
    }
    (data / "dataset_info.json").write_text(json.dumps(registry))
    source = tmp_path / "sft.yaml"
    source.write_text(
        "model_name_or_path: Qwen/Qwen3-0.6B\ndo_train: true\nstage: sft\nfinetuning_type: lora\n"
        "dataset: chat,ms_only\ntemplate: qwen3_nothink\noutput_dir: out\n"
    )
    imported = import_config(source, workdir=tmp_path)
    specs = imported.recipe["stages"][0]["datasets"]
    assert specs[0] == {"id": "org/chat", "subset": "en", "split": "test", "format": "sharegpt", "name": "chat"}
    assert specs[1]["id"] == "org/ms-qa" and specs[1]["hub"] == "ms" and "path" not in specs[1]
    recipe = imported.recipe | {"hardware": {"device": "cpu"}}
    info, _ = build_dataset_info(load_recipe(str(write_recipe(recipe, "imported.yml"))))
    assert info["chat"] == registry["chat"]
    assert info["ms_only"]["ms_hub_url"] == "org/ms-qa" and info["ms_only"]["columns"]["prompt"] == "q"


def test_import_of_online_names_hub_ids(tmp_path: Path) -> None:
    from lfw.recipe.lf_import import import_config

    source = tmp_path / "online.yaml"
    source.write_text(
        "model_name_or_path: Qwen/Qwen3-0.6B\ndo_train: true\nstage: sft\nfinetuning_type: lora\n"
        "dataset: org/a, org/b\ndataset_dir: ONLINE\ntemplate: qwen3_nothink\noutput_dir: out\n"
    )
    specs = import_config(source, workdir=tmp_path).recipe["stages"][0]["datasets"]
    assert specs == [{"id": "org/a", "format": "alpaca"}, {"id": "org/b", "format": "alpaca"}]


@pytest.mark.slow
def test_lfw_run_trains_on_cached_hub_data(tiny, tmp_path: Path, hf_home: Path) -> None:
    """`lfw run` end to end on a hub dataset that only the local cache holds: checked, tokenized, trained."""
    from tests.conftest import assert_complete, run_recipe

    cache_hub_dataset(hf_home, "lfw-test/tiny_alpaca", ALPACA * 4)
    hub = {"id": "lfw-test/tiny_alpaca", "format": "alpaca"}
    recipe = tiny_recipe(tiny, name="hub", stages=[{"stage": "sft", "datasets": [hub]}])
    recipe["training"] |= {"max_steps": 2}
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0 and run_dir is not None
    assert_complete(run_dir, ["1-sft"])
    assert (
        json.loads((run_dir / "dataset_info.json").read_text())["tiny_alpaca"]["hf_hub_url"] == "lfw-test/tiny_alpaca"
    )
