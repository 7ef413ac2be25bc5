"""A model's shape, for memory planning: read from config.json or from presets, never from weights.

`lfw plan` and `lfw doctor` run before any GPU is touched and must stay fast, so the architecture comes from
the model folder's config.json (a few kilobytes) or, for hub ids that are not on disk (no hub access is
assumed), from presets of the public Qwen3 configs. No torch or transformers import here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError

# Linear layers of one decoder block, as LLaMA-Factory's `lora_target: all` adapts them.
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelArch:
    """The numbers that decide memory: sizes of every matrix, vocabulary, tying and any pre-quantization."""

    name: str
    model_type: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    qk_norm: bool = True  # Qwen3 normalises q and k per head (extra activations)
    quantization: str | None = None  # quant_method of a pre-quantized checkpoint (gptq, awq, ...)
    source: str = "preset"

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer in one decoder block."""
        h, q, kv, i = self.hidden, self.q_dim, self.kv_dim, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.linear_shapes().values())

    @property
    def layer_other_params(self) -> int:
        """Norm weights of one block (two RMSNorms, plus q/k norms of head_dim each)."""
        return 2 * self.hidden + (2 * self.head_dim if self.qk_norm else 0)

    @property
    def embedding_params(self) -> int:
        """Input embedding plus the output head when it is a separate matrix."""
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        return self.embedding_params + self.layers * (self.layer_linear_params + self.layer_other_params) + self.hidden

    def describe(self) -> str:
        tied = "tied" if self.tied_embeddings else "untied"
        return (
            f"{self.name}: {self.params / 1e9:.2f}B params, {self.layers} layers, hidden {self.hidden}, "
            f"{self.heads}/{self.kv_heads} heads x {self.head_dim}, ffn {self.intermediate}, "
            f"vocab {self.vocab} ({tied}; {self.source})"
        )


def _qwen3(size: str, hidden: int, layers: int, heads: int, intermediate: int, tied: bool) -> ModelArch:
    return ModelArch(
        name=f"Qwen3-{size}",
        model_type="qwen3",
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=8,
        head_dim=128,
        intermediate=intermediate,
        vocab=151936,
        tied_embeddings=tied,
    )


# Public Qwen3 configs (huggingface.co/Qwen/Qwen3-*/config.json).
PRESETS: dict[str, ModelArch] = {
    "qwen3-0.6b": _qwen3("0.6B", 1024, 28, 16, 3072, True),
    "qwen3-1.7b": _qwen3("1.7B", 2048, 28, 16, 6144, True),
    "qwen3-4b": _qwen3("4B", 2560, 36, 32, 9728, True),
    "qwen3-8b": _qwen3("8B", 4096, 36, 32, 12288, False),
    "qwen3-14b": _qwen3("14B", 5120, 40, 40, 17408, False),
    "qwen3-32b": _qwen3("32B", 5120, 64, 64, 25600, False),
}

_PRESET_NAME = re.compile(r"qwen3-(0\.6|1\.7|4|8|14|32)b", re.IGNORECASE)


def preset_for(name: str) -> ModelArch | None:
    """The preset a hub id or folder name points at (Qwen/Qwen3-4B, qwen3-4b-instruct, ...), if any."""
    match = _PRESET_NAME.search(name.replace("_", "-"))
    return PRESETS[f"qwen3-{match.group(1)}b"] if match else None


def from_config(config: dict[str, Any], name: str, source: str) -> ModelArch:
    """ModelArch from a transformers config.json dictionary (text models; VLMs use their text_config)."""
    text = config.get("text_config") or config
    try:
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        arch = ModelArch(
            name=name,
            model_type=str(config.get("model_type", text.get("model_type", "unknown"))),
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            head_dim=int(text.get("head_dim") or hidden // heads),
            intermediate=int(text["intermediate_size"]),
            vocab=int(text["vocab_size"]),
            tied_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            qk_norm=str(text.get("model_type", config.get("model_type", ""))).startswith("qwen3"),
            quantization=(config.get("quantization_config") or {}).get("quant_method"),
            source=source,
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(
            [
                Problem(
                    source,
                    f"config.json lacks a usable {err} for memory planning",
                    "pass --arch qwen3-4b (a preset) or fix the config",
                )
            ]
        ) from err
    return arch


def read_config(path: Path) -> dict[str, Any] | None:
    """config.json of a local model folder, or None when `path` is no such folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        return None
    try:
        return json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise UserError([Problem(str(config_file), f"unreadable: {err}", "fix or replace config.json")]) from err


def resolve_arch(model: str, base_dir: Path | None = None, arch: str | None = None) -> ModelArch:
    """The architecture of `model` (local folder or hub id); `arch` (a preset name) overrides the lookup."""
    if arch:
        preset = PRESETS.get(arch.lower()) or preset_for(arch)
        if preset is None:
            raise UserError([Problem("--arch", f"unknown preset {arch!r}", f"use one of {', '.join(PRESETS)}")])
        return preset
    path = Path(model).expanduser()
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    config = read_config(path)
    if config is not None:
        return from_config(config, path.name, f"{path}/config.json")
    preset = preset_for(model)
    if preset is not None:
        return replace(preset, name=model)
    raise UserError(
        [
            Problem(
                "model.path",
                f"cannot tell the architecture of {model!r}: no local config.json and no preset",
                f"point model.path at a local folder with config.json, or pass --arch ({', '.join(PRESETS)})",
            )
        ]
    )
