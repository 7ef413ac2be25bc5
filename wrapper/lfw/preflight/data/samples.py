"""A checked row in two shapes: `Conversation` (what the checks and length counts use) and `Sample` (the columns
LLaMA-Factory 0.9.5's aligner makes of it, which `read_samples` returns for the behaviour oracle)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lfw.preflight.data.columns import MEDIA

if TYPE_CHECKING:
    from lfw.preflight.data.layout import DataFormat
    from lfw.preflight.data.readers import Record


@dataclass
class Conversation:
    """A row normalised to what LLaMA-Factory trains on; `variants` are the responses (chosen, rejected)."""

    system: str
    tools: str
    prompt: list[tuple[str, str]]
    variants: list[list[tuple[str, str]]]
    label: bool | None = None  # a KTO row's desirability


@dataclass(frozen=True)
class Sample:
    """One clean row as LLaMA-Factory 0.9.5's aligner (`data/converter.py`) turns it into training columns.

    Field for field, the converter's output for the row (`align_dataset`'s `_prompt`, `_response`, ...):

    - `prompt` == `_prompt`: `[{"role": ..., "content": str}, ...]`, roles `user`, `assistant`, `observation`,
      `function`; odd length, alternating, ending with a user (or observation) turn; alpaca `history` pairs
      come first, then `instruction` and `input` joined by a newline. Pretraining text: one user turn.
    - `response` == `_response`: `[{"role": "assistant" | "function", "content": str}]`; preference rows give
      `[chosen, rejected]`; KTO rows the answer plus an empty assistant message: `[answer, empty]` when the
      label is true, `[empty, answer]` when false; pretraining text gives `[]`.
    - `system` == `_system`, `tools` == `_tools`: strings, "" when the row has none (LLaMA-Factory gives None
      where a registered column is null in this row). The openai converter (`formatting: openai`, used for
      data with `tool_calls`) changes the system prompt as LLaMA-Factory 0.9.5 does: "detailed thinking off"
      when there is neither system nor tools, "\\ndetailed thinking off" or "\\n" appended otherwise.
    - `images`, `videos`, `audios` == `_images`, `_videos`, `_audios`: the row's media list with `media_dir`
      joined onto each path that exists there (LLaMA-Factory's `_find_medias`), or None when the row has none.
    - `path` and `row`: the file the row is in and its 1-based position there (a folder has several files).
    """

    path: Path
    row: int
    prompt: list[dict[str, str]]
    response: list[dict[str, str]]
    system: str
    tools: str
    images: list[Any] | None
    videos: list[Any] | None
    audios: list[Any] | None


def _messages(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in pairs]


def _openai_system(system: str, tools: str) -> str:
    """OpenAIDatasetConverter's own edit of the system prompt."""
    if not system:
        return "" if tools else "detailed thinking off"
    if tools:
        return system + "\n"
    if "detailed thinking on" not in system and "detailed thinking off" not in system:
        return system + "\ndetailed thinking off"
    return system


def aligned(path: Path, rec: Record, sample: Conversation, fmt: DataFormat, media_dir: Path) -> Sample:
    """A checked row in LLaMA-Factory's aligned columns (the mapping is documented on `Sample`)."""
    row = rec.value
    response = [m for variant in sample.variants for m in _messages(variant)]
    if sample.label is not None:
        empty = {"role": "assistant", "content": ""}
        response = response + [empty] if sample.label else [empty, *response]
    system, tools = sample.system, sample.tools
    if fmt.formatting == "openai":
        system = _openai_system(system, tools)
    media = {
        kind: find_medias(row.get(fmt.columns[kind]) if fmt.columns.get(kind) else None, media_dir) for kind in MEDIA
    }
    return Sample(path, rec.index, _messages(sample.prompt), response, system, tools, **media)


def find_medias(value: Any, media_dir: Path) -> list[Any] | None:
    """LLaMA-Factory's DatasetConverter._find_medias: a list, media_dir joined where that file exists."""
    if value is None or value == []:
        return None
    items = list(value) if isinstance(value, list) else [value]

    def find(item: str) -> str:
        joined = os.path.join(media_dir, item)
        return joined if os.path.isfile(joined) else item

    if isinstance(items[0], str):
        return [find(item) for item in items]
    if isinstance(items[0], list):  # video frames
        return [[find(frame) for frame in frames] for frames in items]
    return items
