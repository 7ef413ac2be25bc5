"""dataset_info.json registers what the data has, read once by `lfw data check` (datacheck.dataset_layout).

Fast tests pin the rendered entries and the data-check side; the slow test hands the rendered files to
LLaMA-Factory's own loader and aligner (and its tokenizing pipeline) and compares row for row with
`datacheck.read_samples`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lfw.launch.target import Target
from lfw.preflight.data.check import check_dataset, read_samples
from lfw.preflight.data.layout import dataset_layout
from lfw.recipe.loader import load_recipe
from lfw.rendering.render import build_dataset_info, render
from tests.conftest import REPO, clean_env, tiny_recipe

FIX = Path(__file__).parents[1] / "fixtures" / "data"
PNG = (  # a valid 1x1 PNG
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
    b"\x00\x00\x00\rIDATx\x9cc\xf8\xff\xff?\x00\x05\xfe\x02\xfe\xa7\x35\x81\x84\x00\x00\x00\x00IEND\xaeB`\x82"
)
MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + bytes(64)
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00\x80\x3e\x00\x00\x02\x00\x10\x00"


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    return path


def alpaca_rows() -> list[dict]:
    return [
        {"instruction": "Name a colour.", "input": "", "output": "Red.", "system": "Answer in one word."},
        {"instruction": "And another?", "input": "not red", "output": "Blue.", "history": [["Name one.", "Red."]]},
        {"instruction": "Add 2+2.", "input": "", "output": "4", "system": "Be brief.", "history": []},
    ]


def sharegpt_tool_rows() -> list[dict]:
    tools = json.dumps([{"name": "add", "description": "add", "parameters": {"type": "object", "properties": {}}}])
    call = json.dumps({"name": "add", "arguments": {"a": 2, "b": 2}})
    return [
        {
            "conversations": [
                {"from": "human", "value": "2+2?"},
                {"from": "function_call", "value": call},
                {"from": "observation", "value": "4"},
                {"from": "gpt", "value": "It is 4."},
            ],
            "tools": tools,
            "system": "You add numbers.",
        },
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}], "tools": ""},
    ]


def media_rows(folder: Path) -> list[dict]:
    (folder / "a.png").write_bytes(PNG)
    (folder / "clip.mp4").write_bytes(MP4)
    (folder / "voice.wav").write_bytes(WAV)
    return [
        {
            "messages": [
                {"role": "user", "content": "<image><video>What happens?"},
                {"role": "assistant", "content": "A dot moves."},
            ],
            "images": ["a.png"],
            "videos": ["clip.mp4"],
        },
        {
            "messages": [{"role": "user", "content": "<audio>Who speaks?"}, {"role": "assistant", "content": "Me."}],
            "audios": ["voice.wav"],
        },
    ]


def pref_prompt_rows() -> list[dict]:
    """Seed 004's layout: prompt / chosen / rejected."""
    return [
        {"prompt": "Summarise: the cat sat.", "chosen": "A cat sat.", "rejected": "Dogs run."},
        {"prompt": "Summarise: rain fell.", "chosen": "It rained.", "rejected": "It was sunny."},
        {"prompt": "Summarise: he won.", "chosen": "He won.", "rejected": "He lost."},
    ]


def dataset_entries(write_recipe, datasets: list[dict], stage: str = "sft") -> dict:
    recipe = {
        "name": "t",
        "model": {"path": "Qwen/Qwen3-0.6B", "template": "qwen3_nothink"},
        "training": {"global_batch_size": 1, "max_steps": 1},
        "stages": [{"stage": stage, "datasets": datasets}],
        "hardware": {"device": "cpu"},
    }
    info, _ = build_dataset_info(load_recipe(str(write_recipe(recipe))))
    return {Path(entry["file_name"]).name: entry for entry in info.values()}


# ------------------------------------------------------------------ 1. every column the data has is registered


def test_render_registers_every_column_the_data_has(tmp_path: Path, write_recipe) -> None:
    _write(tmp_path / "alpaca.json", alpaca_rows())
    _write(tmp_path / "tools.json", sharegpt_tool_rows())
    _write(tmp_path / "media.json", media_rows(tmp_path))
    entries = dataset_entries(
        write_recipe,
        [
            {"path": "alpaca.json", "format": "alpaca"},
            {"path": "tools.json", "format": "sharegpt"},
            {"path": "media.json", "format": "multimodal"},
        ],
    )
    assert entries["alpaca.json"]["columns"] == {
        "prompt": "instruction",
        "query": "input",
        "response": "output",
        "history": "history",
        "system": "system",
    }
    assert entries["tools.json"]["columns"] == {"messages": "conversations", "system": "system", "tools": "tools"}
    media = entries["media.json"]
    assert media["columns"] == {"messages": "messages", "images": "images", "videos": "videos", "audios": "audios"}
    assert media["tags"]["role_tag"] == "role" and media["tags"]["user_tag"] == "user"


def test_render_registers_no_column_the_data_lacks(tmp_path: Path, write_recipe) -> None:
    """LLaMA-Factory raises KeyError for a named column no row has (here: `input`, LF's alpaca default)."""
    _write(tmp_path / "plain.json", [{"instruction": "q", "output": "a"}])
    entries = dataset_entries(write_recipe, [{"path": "plain.json", "format": "alpaca"}])
    assert entries["plain.json"]["columns"] == {"prompt": "instruction", "response": "output"}


def test_render_without_the_file_uses_the_format_defaults(tmp_path: Path, write_recipe) -> None:
    entries = dataset_entries(
        write_recipe,
        [{"path": "elsewhere/pairs.json", "format": "preference", "columns": {"prompt": "question"}}],
        "dpo",
    )
    assert entries["pairs.json"] == {
        "file_name": str(tmp_path / "elsewhere" / "pairs.json"),
        "ranking": True,
        "columns": {"prompt": "question", "query": "input", "chosen": "chosen", "rejected": "rejected"},
    }


def test_render_stays_light(tmp_path: Path, write_recipe) -> None:
    """Reading the data's head for dataset_info.json imports nothing heavy (no torch, no PIL, no pyarrow)."""
    _write(tmp_path / "media.json", media_rows(tmp_path))
    recipe = {
        "name": "t",
        "model": {"path": "Qwen/Qwen3-0.6B", "template": "qwen3_nothink"},
        "stages": [{"stage": "sft", "datasets": [{"path": "media.json", "format": "multimodal"}]}],
    }
    code = (
        "import sys\nfrom lfw.recipe.loader import load_recipe\nfrom lfw.rendering.render import build_dataset_info\n"
        f"info, _ = build_dataset_info(load_recipe({str(write_recipe(recipe))!r}))\n"
        "assert info['media']['columns']['videos'] == 'videos', info\n"
        "print(','.join(m for m in ('torch', 'transformers', 'llamafactory', 'PIL', 'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "", out.stderr[-2000:]


def test_columns_first_seen_after_the_head_are_an_error(tmp_path: Path) -> None:
    """lfw registers columns from the first rows; a column that starts later would be ignored by LF."""
    rows = [{"instruction": f"q{i}", "output": "a"} for i in range(250)] + [
        {"instruction": "q", "output": "a", "system": "s"}
    ]
    path = _write(tmp_path / "late.json", rows)
    assert "system" not in dataset_layout(path, "alpaca").dataset_info_entry("x")["columns"]
    report = check_dataset(path, "alpaca")
    assert [(p.code, p.row) for p in report.errors] == [("unregistered-column", 251)]
    assert "columns: {system: system}" in report.errors[0].fix
    assert check_dataset(path, "alpaca", columns={"system": "system"}).ok


def test_a_named_column_no_row_has_is_an_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "plain.json", [{"instruction": "q", "output": "a"}])
    report = check_dataset(path, "alpaca", columns={"system": "sys_prompt"})
    assert [p.code for p in report.errors] == ["column-absent"]
    assert "KeyError" in report.errors[0].message


# ------------------------------------------------------------------ 2. preference rows with a prompt column


def test_preference_with_prompt_column_registers_the_real_names(tmp_path: Path, write_recipe) -> None:
    _write(tmp_path / "pairs.json", pref_prompt_rows())
    entries = dataset_entries(write_recipe, [{"path": "pairs.json", "format": "preference"}], "dpo")
    assert entries["pairs.json"]["columns"] == {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
    samples = read_samples(tmp_path / "pairs.json", "preference", stage="dpo")
    assert samples[0].prompt == [{"role": "user", "content": "Summarise: the cat sat."}]
    assert samples[0].response == [
        {"role": "assistant", "content": "A cat sat."},
        {"role": "assistant", "content": "Dogs run."},
    ]


# ------------------------------------------------------------------ 3. data check honours `columns`


def test_data_check_honours_columns_sft_on_chosen(tmp_path: Path, write_recipe) -> None:
    path = _write(tmp_path / "pairs.json", pref_prompt_rows())
    columns = {"prompt": "prompt", "response": "chosen"}
    report = check_dataset(path, "alpaca", columns=columns, stage="sft")
    assert report.ok, [str(p) for p in report.problems]
    assert [s.response for s in read_samples(path, "alpaca", columns=columns)][1] == [
        {"role": "assistant", "content": "It rained."}
    ]
    entries = dataset_entries(write_recipe, [{"path": "pairs.json", "format": "alpaca", "columns": columns}])
    assert entries["pairs.json"] == {"file_name": str(path), "columns": columns}


# ------------------------------------------------------------------ 4. corrupt media


def test_corrupt_media_is_an_error(tmp_path: Path) -> None:
    rows = media_rows(tmp_path)
    path = _write(tmp_path / "media.json", rows)
    assert check_dataset(path).ok
    (tmp_path / "a.png").write_text("<html>404 Not Found</html>")  # a download that went wrong
    (tmp_path / "voice.wav").write_bytes(b"")
    report = check_dataset(path)
    assert [(p.code, p.row) for p in report.errors] == [("media-corrupt", 1), ("media-corrupt", 2)]
    assert "'a.png' is not an image" in report.errors[0].message and "empty file" in report.errors[1].message
    (tmp_path / "clip.mp4").write_text("just some text")
    assert "holds text, not video data" in check_dataset(path).errors[1].message


def test_image_without_a_common_signature_goes_to_pil(tmp_path: Path) -> None:
    pil = pytest.importorskip("PIL.Image")
    pil.new("RGB", (2, 2)).save(tmp_path / "a.tiff")
    (tmp_path / "b.jpg").write_bytes(b"\x00\x01 not a jpeg")
    rows = [
        {"messages": [{"role": "user", "content": "<image>?"}, {"role": "assistant", "content": "x"}], "images": [f]}
        for f in ("a.tiff", "b.jpg")
    ]
    report = check_dataset(_write(tmp_path / "m.json", rows))
    assert [(p.code, p.row) for p in report.errors] == [("media-corrupt", 2)]


# ------------------------------------------------------------------ LLaMA-Factory loads what was rendered

LF_ROWS = """
import json, sys, yaml
sys.path.insert(0, sys.argv[1])
from tests.rendering.oracle_worker import aligned_rows
from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
from llamafactory.hparams import get_train_args
from llamafactory.model import load_tokenizer
results = {}
for path in sys.argv[2:]:
    config = yaml.safe_load(open(path))
    model_args, data_args, training_args, finetuning_args, _ = get_train_args(config)
    facts = {}
    try:
        facts["rows"] = aligned_rows(model_args, data_args, training_args, finetuning_args.stage)
    except Exception as err:
        facts["rows"] = f"{type(err).__name__}: {err}"
    if not config.get("media_dir"):  # the tiny model's template takes no media
        try:
            tokenizer_module = load_tokenizer(model_args)
            template = get_template_and_fix_tokenizer(tokenizer_module["tokenizer"], data_args)
            stage = {"dpo": "rm"}.get(finetuning_args.stage, finetuning_args.stage)
            dataset = get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module)
            facts["tokenized"] = len(dataset["train_dataset"])
        except Exception as err:
            facts["tokenized"] = f"{type(err).__name__}: {err}"
    results[path] = facts
print("RESULTS=" + json.dumps(results))
"""


def _as_lf(sample) -> dict:
    return {
        "_prompt": sample.prompt,
        "_response": sample.response,
        "_system": sample.system,
        "_tools": sample.tools,
        "_images": sample.images,
        "_videos": sample.videos,
        "_audios": sample.audios,
    }


@pytest.mark.slow
def test_llamafactory_reads_every_column_row_for_row(tmp_path: Path, tiny, write_recipe) -> None:
    data = tmp_path / "data"
    data.mkdir()
    cases = {
        "alpaca": ("sft", {"path": str(_write(data / "alpaca.json", alpaca_rows())), "format": "alpaca"}),
        "tools": ("sft", {"path": str(_write(data / "tools.json", sharegpt_tool_rows())), "format": "sharegpt"}),
        "media": ("sft", {"path": str(_write(data / "media.json", media_rows(data))), "format": "multimodal"}),
        "dpo_prompt": ("dpo", {"path": str(_write(data / "pairs.json", pref_prompt_rows())), "format": "preference"}),
        "sft_chosen": (
            "sft",
            {
                "path": str(data / "pairs.json"),
                "format": "alpaca",
                "columns": {"prompt": "prompt", "response": "chosen"},
            },
        ),
        "plain": (
            "sft",
            {"path": str(_write(data / "plain.json", [{"instruction": "q", "output": "a"}])), "format": "alpaca"},
        ),
        "kto": ("kto", {"path": str(tiny["kto"]), "format": "kto"}),
        "openai": ("sft", {"path": str(FIX / "openai_ok.jsonl"), "format": "openai"}),
        "sharegpt": ("sft", {"path": str(FIX / "sharegpt_ok.jsonl"), "format": "sharegpt"}),
        "multimodal": ("sft", {"path": str(FIX / "multimodal_ok.json"), "format": "multimodal"}),
        "toolcall": ("sft", {"path": str(FIX / "dataset_dir" / "toolcall_demo.json"), "format": "sharegpt"}),
    }
    configs = {}
    for name, (stage, dataset) in cases.items():
        recipe = tiny_recipe(tiny, name=name, stages=[{"stage": stage, "datasets": [dataset]}])
        if dataset_layout(dataset["path"], dataset["format"]).media:  # only LF's aligner reads these
            recipe["model"]["template"] = "qwen2_omni"  # a template that takes images, videos and audio
        run_dir = tmp_path / "runs" / name
        rendering = render(load_recipe(str(write_recipe(recipe, f"{name}.yml"))), Target("cpu", 1), run_dir)
        rendering.write(run_dir)
        configs[name] = (run_dir / rendering.stages[0].config, dataset)
    env = {
        **clean_env(),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-c", LF_ROWS, str(REPO), *(str(c) for c, _ in configs.values())],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS=")]
    assert lines, proc.stderr[-3000:]
    results = json.loads(lines[-1].removeprefix("RESULTS="))
    for name, (config, dataset) in configs.items():
        facts = results[str(config)]
        assert isinstance(facts["rows"], dict), f"{name}: LLaMA-Factory failed to load it: {facts['rows']}"
        (lf_rows,) = facts["rows"].values()
        ours = read_samples(dataset["path"], dataset["format"], columns=dataset.get("columns"))
        assert len(ours) == len(lf_rows), name
        for sample, lf in zip(ours, lf_rows, strict=True):
            lf = lf | {"_system": lf["_system"] or "", "_tools": lf["_tools"] or ""}
            assert _as_lf(sample) == lf, f"{name} row {sample.row}"
        if "tokenized" in facts:
            assert facts["tokenized"] == len(ours), f"{name}: {facts['tokenized']}"
    assert results[str(configs["alpaca"][0])]["rows"]  # the system prompts and history arrive:
    alpaca = next(iter(results[str(configs["alpaca"][0])]["rows"].values()))
    assert [row["_system"] for row in alpaca] == ["Answer in one word.", None, "Be brief."]
    assert len(alpaca[1]["_prompt"]) == 3
    media = next(iter(results[str(configs["media"][0])]["rows"].values()))
    assert media[0]["_videos"] == [str(data / "clip.mp4")] and media[1]["_audios"] == [str(data / "voice.wav")]
    assert os.path.isfile(media[0]["_images"][0])


@pytest.mark.slow
def test_seed004_layout_trains_end_to_end(tiny, tmp_path: Path, offline_env) -> None:
    """SFT on the chosen answers, then DPO, both on prompt/chosen/rejected rows, through `lfw run`."""
    from tests.conftest import assert_complete, run_recipe

    pairs = str(_write(tmp_path / "pairs.json", pref_prompt_rows() * 3))
    recipe = tiny_recipe(tiny, name="seed004")
    recipe["training"] |= {"max_steps": 2}
    recipe["stages"] = [
        {
            "stage": "sft",
            "datasets": [{"path": pairs, "format": "alpaca", "columns": {"prompt": "prompt", "response": "chosen"}}],
        },
        {"stage": "dpo", "datasets": [{"path": pairs, "format": "preference"}]},
    ]
    code, run_dir = run_recipe(recipe, tmp_path)
    assert code == 0 and run_dir is not None
    assert_complete(run_dir, ["1-sft", "2-dpo"])
    info = json.loads((run_dir / "dataset_info.json").read_text())
    assert sorted(entry["columns"]["prompt"] for entry in info.values()) == ["prompt", "prompt"]
