"""Inputs of the GPU benchmark (scripts/bench/gpu_bench.sh): tokenizer, data and model shapes, built without a hub.

Not part of CI. Sub-commands:

    python scripts/bench/prep.py tokenizer OUT                    (here: lfw.tiny's byte-level BPE tokenizer)
    python scripts/bench/prep.py data OUT.json [--rows 2000]      (here: alpaca rows of about 424 tokens)
    python scripts/bench/prep.py shape OUT --shape 0.6b|4b --tokenizer DIR   (here: config.json, no weights)
    python scripts/bench/prep.py weights DIR...                   (on the GPU: random bf16 weights for DIR's config)

`shape` writes the real Qwen3 architecture's config.json next to the tokenizer, so `lfw render` and `lfw plan`
read the true shapes here; `weights` adds random weights there (throughput and memory do not depend on their
values). The tokenizer has 1,536 tokens while the model keeps Qwen3's 151,936-entry embedding and LM head, so
every matrix has its real size. The device side imports only torch and transformers (never lfw).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

# Qwen3's config.json values (hub), minus the weights. Both tie their embeddings.
COMMON = dict(
    vocab_size=151936,
    head_dim=128,
    num_key_value_heads=8,
    max_position_embeddings=40960,
    rms_norm_eps=1e-6,
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    tie_word_embeddings=True,
)
SHAPES = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16),
    "4b": dict(hidden_size=2560, intermediate_size=9728, num_hidden_layers=36, num_attention_heads=32),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Tokens the qwen3_nothink template adds around one alpaca row (user/assistant turns, newlines, <|im_end|>).
TEMPLATE_TOKENS = 12


def build_tokenizer(out: Path) -> None:
    """lfw.tiny's tokenizer, allowed Qwen3's context length (the tiny model's is 2048)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "wrapper"))
    from lfw.tiny import build_tiny_tokenizer

    build_tiny_tokenizer(out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = COMMON["max_position_embeddings"]
    config_path.write_text(json.dumps(config, ensure_ascii=False, indent=2) + "\n")


def one_token_words(tokenizer: Path) -> list[str]:
    """Lower-case words that the byte-level BPE encodes as one token after a space ('Ġword')."""
    vocab = json.loads((tokenizer / "tokenizer.json").read_text())["model"]["vocab"]
    return sorted(t[1:] for t in vocab if t.startswith("Ġ") and t[1:].isalpha() and t[1:].islower())


def build_data(out: Path, tokenizer: Path, rows: int, seed: int = 0) -> dict:
    """Alpaca rows whose lengths vary (instruction 20-80, input 0-120, output 150-450 words: about 424 tokens
    with the template), so packing has real work to do; returns the token statistics it measured."""
    from tokenizers import Tokenizer

    words = one_token_words(tokenizer)
    rng = random.Random(seed)

    def text(lo: int, hi: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))

    data = [{"instruction": text(20, 80), "input": text(0, 120), "output": text(150, 450)} for _ in range(rows)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data) + "\n")
    tok = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    lengths = [
        len(tok.encode(f"{r['instruction']}\n{r['input']}").ids) + len(tok.encode(r["output"]).ids) + TEMPLATE_TOKENS
        for r in data
    ]
    stats = {
        "rows": rows,
        "mean_tokens": round(statistics.mean(lengths), 1),
        "min_tokens": min(lengths),
        "max_tokens": max(lengths),
        "total_tokens": sum(lengths),
        # the token-weighted mean sample length, which sets the attention FLOPs per token (summary.py)
        "len2_over_len": round(sum(n * n for n in lengths) / sum(lengths), 1),
    }
    out.with_suffix(".stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def write_shape(out: Path, shape: str, tokenizer: Path) -> None:
    """config.json + generation_config.json of the real architecture with the carried tokenizer, no weights."""
    from transformers import GenerationConfig, PreTrainedTokenizerFast, Qwen3Config

    tok = PreTrainedTokenizerFast.from_pretrained(str(tokenizer))
    pad, eos = tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")
    layers = SHAPES[shape]["num_hidden_layers"]
    config = Qwen3Config(
        **COMMON, **SHAPES[shape], max_window_layers=layers, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad
    )
    config.architectures = ["Qwen3ForCausalLM"]
    config.dtype = "bfloat16"
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out))
    GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad).save_pretrained(str(out))
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, out / name)


def build_weights(folders: list[Path]) -> None:
    """Random bf16 weights for the config.json in each folder, initialised on the GPU (seconds), saved beside it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_default_dtype(torch.bfloat16)
    for folder in folders:
        start = time.time()
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder))).eval()
        params = sum(p.numel() for p in model.parameters())
        model.save_pretrained(str(folder))
        del model
        torch.cuda.empty_cache()
        size = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 2**30
        seconds = time.time() - start
        print(f"weights: {folder} {params / 1e9:.3f}B params, {size:.2f} GiB in {seconds:.1f} s", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("tokenizer").add_argument("out", type=Path)
    data = sub.add_parser("data")
    data.add_argument("out", type=Path)
    data.add_argument("--tokenizer", type=Path, required=True)
    data.add_argument("--rows", type=int, default=2000)
    shape = sub.add_parser("shape")
    shape.add_argument("out", type=Path)
    shape.add_argument("--shape", choices=sorted(SHAPES), required=True)
    shape.add_argument("--tokenizer", type=Path, required=True)
    sub.add_parser("weights").add_argument("folders", type=Path, nargs="+")
    args = parser.parse_args(argv)
    if args.cmd == "tokenizer":
        build_tokenizer(args.out)
    elif args.cmd == "data":
        print(json.dumps(build_data(args.out, args.tokenizer, args.rows)))
    elif args.cmd == "shape":
        write_shape(args.out, args.shape, args.tokenizer)
    else:
        build_weights(args.folders)
    return 0


if __name__ == "__main__":
    sys.exit(main())
