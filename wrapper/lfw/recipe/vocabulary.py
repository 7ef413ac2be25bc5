"""The one vocabulary of lfw: finetuning methods, stages, dataset formats and the rules between them.

The recipe schema types its fields with these Literals, `lfw data check --format/--stage/--tags` offers exactly these
choices, data check applies the same stage rules, and `assets/dataset_info/formats.json` holds the LLaMA-Factory
column defaults of each format named here (a test keeps its keys equal to FORMATS). To add a format, name it here,
give it defaults in formats.json, and say which stages train on it in STAGE_FORMATS.

Pure: nothing beyond typing, so the schema, the CLI and the data checks can all import it for free.
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal["lora", "qlora", "full", "freeze"]
StageKind = Literal["sft", "dpo", "kto", "pt", "rm"]  # orpo/simpo are dpo with a pref_loss; ppo is not offered
DatasetFormat = Literal[
    "alpaca", "sharegpt", "openai", "preference", "preference_sharegpt", "kto", "multimodal", "text"
]
TagStyle = Literal["from_value", "role_content"]  # sharegpt from/value + human/gpt, or role/content + user/assistant

METHODS: tuple[Method, ...] = get_args(Method)
STAGES: tuple[StageKind, ...] = get_args(StageKind)
FORMATS: tuple[DatasetFormat, ...] = get_args(DatasetFormat)
TAG_STYLES: tuple[TagStyle, ...] = get_args(TagStyle)

# Forgiving spellings of format names, accepted on the command line (recipes spell FORMATS exactly).
FORMAT_ALIASES: dict[str, DatasetFormat] = {
    "dpo": "preference",
    "pairwise": "preference",
    "ranking": "preference",
    "llava": "multimodal",
    "mllm": "multimodal",
    "messages": "openai",
    "pt": "text",
}

# chosen/rejected pairs: LLaMA-Factory's `ranking: true` data.
PREFERENCE_FORMATS: tuple[DatasetFormat, ...] = ("preference", "preference_sharegpt")

# Which formats each stage trains on (LLaMA-Factory's `ranking` and `kto_tag` rules).
STAGE_FORMATS: dict[StageKind, tuple[DatasetFormat, ...]] = {
    "sft": ("alpaca", "sharegpt", "openai", "multimodal"),
    "pt": ("text", "alpaca", "sharegpt", "openai"),
    "dpo": PREFERENCE_FORMATS,
    "rm": PREFERENCE_FORMATS,
    "kto": ("kto",),
}

# Stages that train on preference pairs only (LLaMA-Factory refuses pairs anywhere else) and stages that need a
# boolean kto tag per row.
PREFERENCE_STAGES: tuple[StageKind, ...] = tuple(s for s, f in STAGE_FORMATS.items() if f == PREFERENCE_FORMATS)
KTO_STAGES: tuple[StageKind, ...] = tuple(s for s, f in STAGE_FORMATS.items() if f == ("kto",))
