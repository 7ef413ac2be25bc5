"""Tests for lfw.tiny: the offline tiny Qwen3 model, its tokenizer and the demo datasets.

Every end-to-end test builds on these artefacts, so their contract is checked here: small size, a tokenizer
consistent with the model and with LLaMA-Factory's Qwen/ChatML templates, a working chat template, determinism
and learnable, well-formed data. One build is shared by the module (a few seconds on CPU).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from lfw import tiny

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    return tiny.ensure_tiny(tmp_path_factory.mktemp("tiny"), seed=0, rows=16)


@pytest.fixture(scope="module")
def tokenizer(built):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(built["model"])


@pytest.fixture(scope="module")
def model(built):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(built["model"]).eval()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_import_does_not_load_torch():
    heavy = "('torch', 'transformers', 'tokenizers')"
    code = f"import sys, lfw.tiny; sys.exit(any(m in sys.modules for m in {heavy}))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_model_is_tiny_qwen3_matching_tokenizer(built, model, tokenizer):
    config = json.loads((built["model"] / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["dtype"] == "float32" and config["tie_word_embeddings"] is True
    n_params = sum(p.numel() for p in model.parameters())
    assert 100_000 < n_params < 1_000_000
    assert model.config.vocab_size == len(tokenizer) == model.get_input_embeddings().weight.shape[0]
    assert (built["model"] / "model.safetensors").is_file()


def test_special_tokens_and_ids(built, model, tokenizer):
    for token in tiny.SPECIAL_TOKENS + tiny.ADDED_TOKENS:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
    eos, pad = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>",
        "<|endoftext|>",
        None,
    )
    assert (model.config.eos_token_id, model.config.pad_token_id) == (eos, pad)
    generation = json.loads((built["model"] / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [eos, pad] and generation["pad_token_id"] == pad


def test_tokenizer_round_trips_any_text(tokenizer):
    text = "What is the capital of France? 北京，你好！ 3+4=7 <think>\nhmm\n</think> 🙂 αβγ\ttab"
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.convert_ids_to_tokens(tokenizer.encode("123", add_special_tokens=False)) == [
        "1",
        "2",
        "3",
    ]
    assert len(tokenizer.encode("What is the capital of France?", add_special_tokens=False)) <= 8


def test_chat_template_renders_chatml(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "<think>\nplan\n</think>\n\nHello"},
        {"role": "user", "content": "What is 3+4?"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nWhat is 3+4?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_think = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think == prompt + "<think>\n\n</think>\n\n"
    # Reasoning after the last user turn is kept, as in Qwen3.
    last = tokenizer.apply_chat_template(messages[:3], tokenize=False)
    assert last.endswith("<|im_start|>assistant\n<think>\nplan\n</think>\n\nHello<|im_end|>\n")


def test_same_seed_same_weights(built, tmp_path):
    again = tiny.build_tiny_model(tmp_path / "again", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha256(again / name) == _sha256(built["model"] / name), name
    other = tiny.build_tiny_model(tmp_path / "other", seed=1)
    assert _sha256(other / "model.safetensors") != _sha256(built["model"] / "model.safetensors")
    assert _sha256(other / "tokenizer.json") == _sha256(built["model"] / "tokenizer.json")


def test_generate_runs(model, tokenizer):
    import torch

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and inputs["input_ids"].shape[1] < out.shape[1] <= inputs["input_ids"].shape[1] + 4


def test_demo_data_formats(built):
    rows = {name: json.loads(built[name].read_text(encoding="utf-8")) for name in tiny.DEMO_FILES}
    assert all(len(r) == 16 for r in rows.values())
    assert all(set(r) == {"instruction", "input", "output"} and r["output"] for r in rows["sft_alpaca"])
    for row in rows["sft_sharegpt"]:
        turns = [m for m in row["conversations"] if m["from"] != "system"]
        assert [m["from"] for m in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
    assert all(r["chosen"] != r["rejected"] for r in rows["dpo_pairs"])
    assert {r["label"] for r in rows["kto"]} == {True, False}
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows["kto"])


def test_demo_data_is_deterministic(built, tmp_path):
    again = tiny.make_demo_data(tmp_path, seed=0, rows=16)
    assert {k: _sha256(p) for k, p in again.items()} == {k: _sha256(built[k]) for k in tiny.DEMO_FILES}
    other = tiny.make_demo_data(tmp_path / "other", seed=1, rows=16)
    assert _sha256(other["sft_alpaca"]) != _sha256(built["sft_alpaca"])


def test_ensure_tiny_is_idempotent(built, capsys):
    root = built["model"].parent
    stamp = (built["model"] / "model.safetensors").stat().st_mtime_ns
    assert tiny.main([str(root), "--rows", "16"]) == 0
    assert (built["model"] / "model.safetensors").stat().st_mtime_ns == stamp
    captured = capsys.readouterr()
    assert f"model\t{built['model'].resolve()}" in captured.out and "reused" in captured.err


@pytest.mark.parametrize("template", ["qwen3_nothink", "qwen3", "chatml"])
def test_llamafactory_templates_fit_the_tokenizer(built, template):
    pytest.importorskip("llamafactory")
    from llamafactory.data.template import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(built["model"])
    size = len(tokenizer)
    tpl = get_template_and_fix_tokenizer(tokenizer, DataArguments(template=template))
    assert len(tokenizer) == size  # nothing added, so no resize_vocab is needed
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in tpl.get_stop_token_ids(tokenizer)
    prompt, answer = tpl.encode_oneturn(
        tokenizer, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    )
    assert tokenizer.decode(prompt).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert tokenizer.decode(answer).endswith("Yo<|im_end|>\n")


def test_dataset_info_is_understood_by_llamafactory(built, tmp_path):
    pytest.importorskip("llamafactory")
    from llamafactory.data.parser import get_dataset_list

    info = tiny.demo_dataset_info({k: built[k] for k in tiny.DEMO_FILES})
    (tmp_path / "dataset_info.json").write_text(json.dumps(info))
    attrs = dict(zip(info, get_dataset_list(list(info), str(tmp_path)), strict=True))
    assert all(a.load_from == "file" and Path(a.dataset_name).is_file() for a in attrs.values())
    assert attrs["dpo_pairs"].ranking and attrs["kto"].kto_tag == "label"
    assert attrs["sft_sharegpt"].formatting == "sharegpt" and attrs["sft_alpaca"].formatting == "alpaca"
