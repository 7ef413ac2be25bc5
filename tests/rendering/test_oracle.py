"""The behaviour oracle: LLaMA-Factory itself, not its parser, judges every rendered stage.

Every bundled recipe (model and data swapped for the tiny ones) and a matrix of variants of the tiny demo are
rendered; tests/oracle_worker.py then runs, in one subprocess that imports LLaMA-Factory once, for every stage:
LF's parser, a generic walk over LF's argument dataclasses for enum-typed values, LF's template registry, LF's
model loader (quantized? trainable parameters? which adapters merged, which one trained? which reference
model?) and LF's dataset loader and aligner (every column of the file, row for row). Chained stages load a real
earlier result: before stage N+1 the worker saves the freshly initialised adapter (or full model) that LF's loader
built for stage N into stage N's output folder, without training. Each property is its own test, parametrized
by variant and stage, so a failure names both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from lfw.infra.errors import UserError
from lfw.launch.runner import check_data, preflight
from lfw.launch.target import Target
from lfw.recipe.loader import LoadedRecipe, load_recipe
from lfw.rendering.render import model_location, render
from tests.conftest import bundled_targets, clean_env, tiny_recipe

pytestmark = pytest.mark.slow
WORKER = Path(__file__).with_name("oracle_worker.py")

# ---------------------------------------------------------------------------------------------------------------
# Data files, each with every column its format can carry (LF's own layouts).
SYSTEM = "You are terse."
TOOLS = json.dumps([{"name": "add", "description": "Add two numbers", "parameters": {"type": "object"}}])


def _sharegpt(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": role, "value": text} for role, text in turns]


def _messages(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"role": role, "content": text} for role, text in turns]


DATA: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "alpaca": (
        "alpaca",
        [
            {"instruction": "Add.", "input": "2+3", "output": "5", "system": SYSTEM, "history": [["Hi", "Hello"]]},
            {"instruction": "Capital of Peru?", "input": "", "output": "Lima", "system": "", "history": []},
        ],
    ),
    "sharegpt": (
        "sharegpt",
        [
            {
                "conversations": _sharegpt(
                    ("system", SYSTEM),
                    ("human", "What is 2+3?"),
                    ("function_call", '{"name": "add", "arguments": {"a": 2, "b": 3}}'),
                    ("observation", "5"),
                    ("gpt", "2+3=5"),
                ),
                "tools": TOOLS,
            },
            {"conversations": _sharegpt(("human", "Hi"), ("gpt", "Hello")), "tools": ""},
        ],
    ),
    "openai": (
        "openai",
        [
            {"messages": _messages(("system", SYSTEM), ("user", "Hi"), ("assistant", "Hello"))},
            {"messages": _messages(("user", "1+1?"), ("assistant", "2"), ("user", "2+2?"), ("assistant", "4"))},
        ],
    ),
    "preference": (
        "preference",
        [
            {"instruction": "Capital of Peru?", "input": "", "chosen": "Lima", "rejected": "I don't know."},
            {"instruction": "Repeat.", "input": "stone", "chosen": "stone", "rejected": "cloud"},
        ],
    ),
    # Seed 004's layout: a `prompt` column instead of instruction/input.
    "preference_prompt": (
        "preference",
        [
            {"prompt": "Capital of Peru?", "chosen": "Lima", "rejected": "I don't know."},
            {"prompt": "Repeat the word stone.", "chosen": "stone", "rejected": "cloud"},
        ],
    ),
    "preference_sharegpt": (
        "preference_sharegpt",
        [
            {
                "conversations": _sharegpt(("system", SYSTEM), ("human", "Capital of Peru?")),
                "chosen": {"from": "gpt", "value": "Lima"},
                "rejected": {"from": "gpt", "value": "I don't know."},
            },
            {
                "conversations": _sharegpt(("human", "Hi"), ("gpt", "Hello"), ("human", "1+1?")),
                "chosen": {"from": "gpt", "value": "2"},
                "rejected": {"from": "gpt", "value": "3"},
            },
        ],
    ),
    "kto": (
        "kto",
        [
            {"messages": _messages(("system", SYSTEM), ("user", "1+1?"), ("assistant", "2")), "label": True},
            {"messages": _messages(("user", "1+1?"), ("assistant", "3")), "label": False},
        ],
    ),
    # Images only, which every vision template takes: the file a bundled multimodal recipe gets (first of its format).
    "image": (
        "multimodal",
        [
            {
                "messages": _messages(("user", "<image>What is this?"), ("assistant", "A dot.")),
                "images": ["media/dot.png"],
            },
            {
                "messages": _messages(("user", "<image><image>The same?"), ("assistant", "Yes.")),
                "images": ["media/dot.png", "media/dot.png"],
            },
        ],
    ),
    "multimodal": (
        "multimodal",
        [
            {
                "messages": _messages(("user", "<image>What is this?"), ("assistant", "A dot.")),
                "images": ["media/dot.png"],
            },
            {
                "messages": _messages(("user", "<video><audio>What happens?"), ("assistant", "Nothing.")),
                "videos": ["media/still.mp4"],
                "audios": ["media/beep.wav"],
            },
        ],
    ),
    # Long enough for pt's packing into cutoff_len blocks.
    "text": (
        "text",
        [{"text": " ".join([sentence] * 12)} for sentence in ("Lima is in Peru.", "Two and three is five.")],
    ),
}


def _write_media(folder: Path) -> None:
    """A PNG, an MP4 and a WAV that LF's aligner finds in media_dir (decoding them needs a multimodal model)."""
    import av
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), "white").save(folder / "dot.png")
    with wave.open(str(folder / "beep.wav"), "wb") as audio:
        audio.setnchannels(1)
        audio.setsampwidth(2)
        audio.setframerate(16000)
        audio.writeframes(b"\0\0" * 1600)
    with av.open(str(folder / "still.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        for _ in range(4):
            frame = av.VideoFrame.from_ndarray(np.zeros((16, 16, 3), dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


# ---------------------------------------------------------------------------------------------------------------
# What LF's aligner should return for a row, from the row itself.
ROLES = {"human": "user", "gpt": "assistant", "function_call": "function", "tool": "observation"}


def _turn(message: dict[str, str]) -> dict[str, str]:
    role = message.get("from", message.get("role"))
    return {"role": ROLES.get(role, role), "content": message.get("value", message.get("content"))}


ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "system": "system",
}


def expected_row(row: dict[str, Any], media_dir: Path, columns: dict[str, str] | None = None) -> dict[str, Any]:
    """LF's standard form (_prompt, _response, _system, _tools, _images, _videos, _audios) of one raw row;
    `columns` (a recipe's renames of alpaca SFT columns) picks which of the row's columns LF reads as which."""
    media = {
        f"_{kind}": [str(media_dir / p) for p in row[kind]] if row.get(kind) else None
        for kind in ("images", "videos", "audios")
    }
    if columns:
        names = {**ALPACA_COLUMNS, **columns}
        row = {ALPACA_COLUMNS[key]: row[name] for key, name in names.items() if name in row}
    if "text" in row:
        return {"_prompt": [_turn({"role": "user", "content": row["text"]})], "_response": [], "_system": ""}
    turns_key = "conversations" if "conversations" in row else "messages" if "messages" in row else None
    if turns_key is None:  # alpaca layout (instruction or prompt, input, output or chosen/rejected)
        prompt = [
            _turn({"role": r, "content": c})
            for pair in row.get("history") or []
            for r, c in zip(("user", "assistant"), pair, strict=True)
        ]
        query = "\n".join(text for text in (row.get("instruction", row.get("prompt")), row.get("input")) if text)
        prompt.append({"role": "user", "content": query})
        answers = [row["chosen"], row["rejected"]] if "chosen" in row else [row["output"]]
        response = [{"role": "assistant", "content": text} for text in answers]
        return {"_prompt": prompt, "_response": response, "_system": row.get("system", ""), "_tools": "", **media}
    turns = [_turn(message) for message in row[turns_key]]
    system = turns.pop(0)["content"] if turns and turns[0]["role"] == "system" else ""
    if "chosen" in row:
        prompt, response = turns, [_turn(row["chosen"]), _turn(row["rejected"])]
    elif "label" in row:
        empty = {"role": "assistant", "content": ""}
        prompt, response = turns[:-1], [turns[-1], empty] if row["label"] else [empty, turns[-1]]
    else:
        prompt, response = turns[:-1], turns[-1:]
    return {"_prompt": prompt, "_response": response, "_system": system, "_tools": row.get("tools", ""), **media}


# ---------------------------------------------------------------------------------------------------------------
# The matrix.
@dataclass(frozen=True)
class Variant:
    """The tiny demo with other stages, method, DeepSpeed or template; or a bundled recipe (`bundled`)."""

    id: str
    stages: tuple[str, ...] = ("sft:alpaca", "dpo:preference")  # stage[/pref_loss]:data key
    method: dict[str, Any] = field(default_factory=lambda: {"type": "lora"})
    deepspeed: str = "none"
    template: str = "qwen3_nothink"
    may_refuse: bool = False  # refusing it before any stage runs is a correct outcome too
    bundled: Path | None = None


VARIANTS = [
    *(Variant(path.stem, bundled=path) for path, _ in bundled_targets()),
    Variant("lora-sft-dpo-kto", stages=("sft:alpaca", "dpo:preference", "kto:kto")),
    Variant("qlora4-sft-dpo", method={"type": "qlora", "quantization": {"bits": 4}}),
    Variant("qlora8-sft-dpo", method={"type": "qlora", "quantization": {"bits": 8}}),
    Variant("full-sft-dpo", method={"type": "full"}),
    Variant("freeze1-sft-dpo", method={"type": "freeze", "freeze_trainable_layers": 1}),
    Variant("dpo-sigmoid", stages=("sft:alpaca", "dpo/sigmoid:preference")),
    Variant("dpo-orpo", stages=("sft:alpaca", "dpo/orpo:preference")),
    Variant("dpo-simpo", stages=("dpo/simpo:preference",)),
    Variant("kto", stages=("sft:alpaca", "kto:kto")),
    Variant("rm", stages=("rm:preference",)),
    Variant("pt-text", stages=("pt:text",)),
    Variant("full-kto", stages=("kto:kto",), method={"type": "full"}),
    Variant("lora-z2", deepspeed="z2"),
    Variant("lora-z3", deepspeed="z3"),
    Variant("lora-z3-offload", deepspeed="z3_offload"),
    Variant(
        "lora-z3-three-stages", stages=("sft:alpaca", "dpo:preference", "kto:kto"), deepspeed="z3", may_refuse=True
    ),
    Variant("full-z3", stages=("sft:alpaca",), method={"type": "full"}, deepspeed="z3"),
    Variant("data-sharegpt-system-tools", stages=("sft:sharegpt",)),
    Variant("data-openai", stages=("sft:openai",)),
    Variant("data-preference-prompt", stages=("sft:alpaca", "dpo:preference_prompt"), may_refuse=True),
    Variant("data-preference-sharegpt", stages=("dpo:preference_sharegpt",)),
    Variant("data-multimodal", stages=("sft:multimodal",), template="qwen2_omni"),
    Variant("data-media-text-template", stages=("sft:multimodal",), may_refuse=True),
    Variant("template-typo", stages=("sft:alpaca",), template="qwen3_nothnk", may_refuse=True),
]
FORMAT_DATA = {fmt: key for key, (fmt, _) in reversed(DATA.items())}  # a bundled recipe's format -> our file


def _bundled_data(spec: Any) -> str:
    """Our data file for a bundled recipe's dataset: with `columns`, the first whose rows have those columns."""
    if spec.columns:
        return next(key for key, (_, rows) in DATA.items() if set(spec.columns.values()) <= set(rows[0]))
    return FORMAT_DATA[spec.format]


def _stage_kinds(variant: Variant) -> list[str]:
    if variant.bundled:
        return [stage.stage for stage in load_recipe(str(variant.bundled)).recipe.stages]
    return [spec.split(":")[0].split("/")[0] for spec in variant.stages]


CASES = [(v.id, i) for v in VARIANTS for i, _ in enumerate(_stage_kinds(v))]
CASE_IDS = [f"{v.id}/{i + 1}-{kind}" for v in VARIANTS for i, kind in enumerate(_stage_kinds(v))]


def _load(variant: Variant, tiny: dict[str, Path], data_dir: Path, recipe_dir: Path) -> tuple[LoadedRecipe, Target]:
    """The variant's recipe, loaded by lfw, and the target it renders for."""
    if variant.bundled:
        recipe = load_recipe(str(variant.bundled)).recipe
        overrides = [f"model.path={tiny['model']}"] + [
            f"stages.{i}.datasets.{j}.path={data_dir / (_bundled_data(ds) + '.json')}"
            for i, stage in enumerate(recipe.stages)
            for j, ds in enumerate(stage.datasets)
        ]
        target = dict(bundled_targets())[variant.bundled]
        if target.device == "cuda":  # transformers refuses bf16 here (no GPU): judge the fp16 rendering
            overrides.append("training.precision=fp16")
        return load_recipe(str(variant.bundled), overrides), target
    stages = []
    for spec in variant.stages:
        kind, key = spec.split(":")
        stage, _, loss = kind.partition("/")
        stages.append(
            {
                "stage": stage,
                **({"pref_loss": loss} if loss else {}),
                "datasets": [{"path": str(data_dir / f"{key}.json"), "format": DATA[key][0]}],
                "training": {"max_steps": 2},
            }
        )
    recipe = tiny_recipe(
        tiny,
        name=variant.id,
        model={"path": str(tiny["model"]), "template": variant.template},
        method={**variant.method, "lora": {"rank": 8, "alpha": 16, "target": "all"}}
        if variant.method["type"] in ("lora", "qlora")
        else variant.method,
        stages=stages,
        hardware={"device": "cpu", "deepspeed": variant.deepspeed},
    )
    path = recipe_dir / f"{variant.id}.yml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return load_recipe(str(path)), Target("cpu", 1)


@dataclass
class Case:
    """One variant as lfw rendered it (or refused it) and what LF did with each stage."""

    loaded: LoadedRecipe
    refused: str | None
    configs: list[dict[str, Any]]
    outputs: list[str]
    facts: list[dict[str, Any]] | dict[str, str]


@pytest.fixture(scope="session")
def oracle(tiny: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    root = tmp_path_factory.mktemp("oracle")
    data_dir = root / "data"
    data_dir.mkdir()
    for key, (_, rows) in DATA.items():
        (data_dir / f"{key}.json").write_text(json.dumps(rows, ensure_ascii=False, indent=1))
    _write_media(data_dir / "media")
    cases: dict[str, Case] = {}
    jobs = []
    for variant in VARIANTS:
        loaded, target = _load(variant, tiny, data_dir, root)
        run_dir = root / "runs" / variant.id
        try:
            if target.device == "cpu":
                preflight(loaded, target, dict(os.environ))
            check_data(loaded)
            rendering = render(loaded, target, run_dir)
        except UserError as err:
            cases[variant.id] = Case(loaded, str(err), [], [], [])
            continue
        rendering.write(run_dir)
        paths = [str(run_dir / stage.config) for stage in rendering.stages]
        configs = [yaml.safe_load(Path(p).read_text()) for p in paths]
        cases[variant.id] = Case(loaded, None, configs, [str(s.output_dir) for s in rendering.stages], [])
        jobs.append({"id": variant.id, "stages": paths})
    (root / "jobs.json").write_text(json.dumps(jobs))
    env = {
        **clean_env(),
        # One process of a torchrun launch: LF refuses DeepSpeed configs outside a distributed launch.
        "LOCAL_RANK": "0",
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(root / "hf_datasets"),
    }
    log = root / "worker.log"
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, str(WORKER), str(root / "jobs.json"), str(root / "results.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=900,
        )
    assert proc.returncode == 0, log.read_text()[-5000:]
    results = json.loads((root / "results.json").read_text())["variants"]
    for job in jobs:
        cases[job["id"]].facts = results[job["id"]]
    return cases


def stage_facts(oracle: dict[str, Case], variant_id: str, index: int) -> tuple[Case, dict[str, Any]]:
    """The facts of one stage; a refusal skips (when refusing is right) or fails (when it is not)."""
    variant = next(v for v in VARIANTS if v.id == variant_id)
    case = oracle[variant_id]
    if case.refused:
        if variant.may_refuse:
            pytest.skip(f"lfw refuses it before any stage runs: {case.refused.splitlines()[0]}")
        pytest.fail(f"lfw refused a recipe LLaMA-Factory can run: {case.refused}")
    assert isinstance(case.facts, list), f"the oracle worker crashed on this variant: {case.facts}"
    if index >= len(case.facts):
        last = case.facts[-1]
        reason = last.get("model_error") or last.get("parse")
        pytest.fail(f"stage not reached; stage {len(case.facts)} stopped the chain:\n{reason}")
    return case, case.facts[index]


def _log(facts: dict[str, Any]) -> str:
    return "\nLF log:\n" + "\n".join(facts.get("log_tail", []))


parametrize = pytest.mark.parametrize("variant_id,index", CASES, ids=CASE_IDS)


# ---------------------------------------------------------------------------------------------------------------
@parametrize
def test_llamafactory_parses(oracle, variant_id, index):
    _, facts = stage_facts(oracle, variant_id, index)
    assert facts["parse"] == "ok", facts["parse"]


@parametrize
def test_enum_values_are_in_their_enum(oracle, variant_id, index):
    _, facts = stage_facts(oracle, variant_id, index)
    assert facts["enum_violations"] == [], facts["enum_violations"]


@parametrize
def test_template_is_registered(oracle, variant_id, index):
    _, facts = stage_facts(oracle, variant_id, index)
    assert facts["template"]["registered"], f"template {facts['template']['name']!r} is not in LF's TEMPLATES"


def _model(facts: dict[str, Any]) -> dict[str, Any]:
    assert "model" in facts, facts.get("model_error", facts.get("parse"))
    return facts["model"]


@parametrize
def test_base_is_quantized_as_the_recipe_says(oracle, variant_id, index):
    case, facts = stage_facts(oracle, variant_id, index)
    quantization = case.loaded.recipe.method.quantization
    model = _model(facts)
    assert model["quant_bits"] == (quantization.bits if quantization else None), (
        f"bitsandbytes layers: {model['quant_bits']}-bit; LF said {model['quantize_log']}" + _log(facts)
    )


def _lora_parameters(model_dir: Path, rank: int, target: str) -> int:
    """rank x (in + out) for every adapted linear layer of a Qwen3-style decoder, from its config.json."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q_dim, kv_dim = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    sizes = {
        "q_proj": hidden + q_dim,
        "k_proj": hidden + kv_dim,
        "v_proj": hidden + kv_dim,
        "o_proj": q_dim + hidden,
        "gate_proj": hidden + inter,
        "up_proj": hidden + inter,
        "down_proj": inter + hidden,
    }
    targets = sizes if target == "all" else target.split(",")
    return rank * config["num_hidden_layers"] * sum(sizes[name] for name in targets)


@parametrize
def test_trainable_parameters_match_the_method(oracle, variant_id, index):
    case, facts = stage_facts(oracle, variant_id, index)
    recipe = case.loaded.recipe
    model = _model(facts)
    trainable, frozen = model["trainable_names"], model["frozen_names"]
    value_head = [name for name in trainable if "v_head" in name]
    assert bool(value_head) == (recipe.stages[index].stage == "rm"), value_head
    body = [name for name in trainable if "v_head" not in name]
    if recipe.method.type in ("lora", "qlora"):
        assert body and all("lora_" in name for name in body), [n for n in body if "lora_" not in n]
        base_dir = Path(model_location(recipe.model.path, case.loaded.base_dir))
        expected = _lora_parameters(base_dir, recipe.method.lora.rank, recipe.method.lora.target)
        head = json.loads((base_dir / "config.json").read_text())["hidden_size"] + 1 if value_head else 0
        assert model["trainable"] == expected + head
    elif recipe.method.type == "full":
        assert body and not frozen, f"frozen in full fine-tuning: {frozen}"
    else:
        layers = json.loads((Path(case.configs[0]["model_name_or_path"]) / "config.json").read_text())[
            "num_hidden_layers"
        ]
        last = range(layers - recipe.method.freeze_trainable_layers, layers)
        in_last = [any(f".layers.{i}." in name for i in last) for name in body]
        assert body and all(in_last), f"trainable outside the last layers {list(last)}: {body}"
        assert not [n for n in frozen if any(f".layers.{i}." in n for i in last)], "frozen inside trainable layers"


def _policy_lineage(config: dict[str, Any], model: dict[str, Any]) -> list[str]:
    """What the trained model starts from: its base, the adapters LF merged, and the adapter it resumed."""
    adapters = [a for a in (config.get("adapter_name_or_path") or "").split(",") if a]
    resumed = [model["trained_adapter"]] if model["trained_adapter"] not in (None, "new") else []
    return [config["model_name_or_path"], *adapters[: model["merged"]], *resumed]


def _expanded(case: Case, lineage: list[str]) -> list[str]:
    """A stage that resumed an adapter saved it further trained: its output stands for the adapters it continued."""
    continued = {
        case.outputs[i]: facts["model"]["trained_adapter"]
        for i, facts in enumerate(case.facts)
        if facts.get("model", {}).get("trained_adapter") not in (None, "new")
    }
    expanded = []
    for item in lineage:
        chain = [item]
        while chain[0] in continued:
            chain.insert(0, continued[chain[0]])
        expanded += chain
    return expanded


def _previous_model(case: Case, index: int) -> list[str]:
    """The recipe's meaning of a chain: stage N starts from what stage N-1 produced (its whole lineage)."""
    recipe = case.loaded.recipe
    base = model_location(recipe.model.path, case.loaded.base_dir)
    if recipe.method.type in ("lora", "qlora"):
        return [base, *case.outputs[:index]]
    return [case.outputs[index - 1]] if index else [base]


@parametrize
def test_stage_continues_from_the_previous_stage(oracle, variant_id, index):
    case, facts = stage_facts(oracle, variant_id, index)
    config, model = case.configs[index], _model(facts)
    assert _expanded(case, _policy_lineage(config, model)) == _previous_model(case, index), model["adapter_log"]
    if config.get("create_new_adapter"):
        assert model["trained_adapter"] == "new", (
            f"the YAML asks for a new adapter, LF resumed {model['trained_adapter']}: {model['adapter_log']}"
        )


@parametrize
def test_reference_model_is_the_previous_stage(oracle, variant_id, index):
    case, facts = stage_facts(oracle, variant_id, index)
    stage = case.loaded.recipe.stages[index]
    _model(facts)
    reference = facts["reference"]
    if stage.stage not in ("dpo", "kto"):
        pytest.skip(f"{stage.stage} has no reference model")
    if stage.pref_loss in ("orpo", "simpo"):
        assert reference is None, f"{stage.pref_loss} needs no reference, LF builds {reference}"
        return
    assert reference is not None
    assert _expanded(case, reference["lineage"]) == _previous_model(case, index), reference


@parametrize
def test_dataset_rows_match_the_file(oracle, variant_id, index):
    case, facts = stage_facts(oracle, variant_id, index)
    if facts["parse"] != "ok":
        pytest.fail(facts["parse"])
    assert "rows" in facts, facts.get("rows_error")
    specs = {str(Path(ds.path)): ds for ds in case.loaded.recipe.stages[index].datasets}
    assert sorted(facts["rows"]) == sorted(specs)
    for name, rows in facts["rows"].items():
        raw = json.loads(Path(name).read_text())
        media_dir = Path(case.configs[index].get("media_dir") or Path(name).parent)
        for number, (got, row) in enumerate(zip(rows, raw, strict=True)):
            want = expected_row(row, media_dir, specs[name].columns)
            assert {k: got[k] for k in want} == want, f"{Path(name).name} row {number}: {row}"


@parametrize
def test_dataset_rows_match_data_check(oracle, variant_id, index):
    """`lfw data check` reads each row as LF's aligner does (read_samples), so what it checked is what trains."""
    from lfw.preflight.data.check import read_samples

    case, facts = stage_facts(oracle, variant_id, index)
    assert "rows" in facts, facts.get("rows_error") or facts["parse"]
    media_dir = case.configs[index].get("media_dir")
    for spec in case.loaded.recipe.stages[index].datasets:
        path = str(Path(spec.path))
        samples = read_samples(
            path,
            spec.format,
            columns=spec.columns,
            tags=spec.tags,
            media_dir=media_dir,
            stage=case.loaded.recipe.stages[index].stage,
        )
        lf_rows = facts["rows"][path]
        assert len(samples) == len(lf_rows), f"data check kept {len(samples)} rows, LF {len(lf_rows)}"
        for sample in samples:
            got = lf_rows[sample.row - 1]
            read = {
                f"_{key}": getattr(sample, key)
                for key in ("prompt", "response", "system", "tools", "images", "videos", "audios")
            }
            assert got == read, f"{Path(path).name} row {sample.row}"


@parametrize
def test_template_tokenizes_the_data(oracle, variant_id, index):
    _, facts = stage_facts(oracle, variant_id, index)
    if facts["parse"] != "ok":
        pytest.fail(facts["parse"])
    media = {
        kind: any(row[f"_{kind}s"] for rows in facts.get("rows", {}).values() for row in rows)
        for kind in ("image", "video", "audio")
    }
    template = facts["template"]
    missing = [kind for kind, used in media.items() if used and not template.get("media", {}).get(kind)]
    assert not missing, f"template {template['name']!r} cannot take the data's {', '.join(missing)}s"
    if any(media.values()):
        pytest.skip("tokenizing media needs the model's processor; the tiny model is text-only")
    assert facts.get("tokenized", 0) > 0, facts.get("tokenize_error")


# ---------------------------------------------------------------------------------------------------------------
def test_qlora_sft_then_dpo_runs_on_a_4bit_base(tiny, write_recipe, tmp_path, offline_env, capsys):
    """`lfw run` end to end: both stages log LF's 4-bit quantization and finish."""
    from lfw.cli import main

    stages = [
        {"stage": "sft", "datasets": [{"path": str(tiny["sft_alpaca"]), "format": "alpaca"}]},
        {"stage": "dpo", "datasets": [{"path": str(tiny["dpo_pairs"]), "format": "preference"}]},
    ]
    recipe = tiny_recipe(tiny, method={"type": "qlora", "lora": {"rank": 8}}, stages=stages)
    recipe["training"]["max_steps"] = 3
    code = main(["run", str(write_recipe(recipe)), "--output-dir", str(tmp_path / "runs")])
    assert code == 0, capsys.readouterr()
    logs = sorted(p for p in (tmp_path / "runs").glob("*/*/logs/*.log") if not p.name.endswith(".tokenize.log"))
    assert [p.stem for p in logs] == ["1-sft", "2-dpo"], logs
    for path in logs:
        text = path.read_text()
        assert "Quantizing model to 4 bit with bitsandbytes" in text, f"{path.name}: base not quantized"
        assert "trainable params" in text and "Traceback" not in text, text[-3000:]
