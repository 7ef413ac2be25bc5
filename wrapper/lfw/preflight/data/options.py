"""The arguments of a data check (the recipe's dataset fields), validated once before any row is read.

Format, stage and tag-style names come from `lfw.recipe.vocabulary`, so `lfw data check` accepts exactly what a
recipe accepts (plus the forgiving format aliases); a bad argument is a `UserError`, not a problem in the data.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lfw.infra.errors import Problem, UserError
from lfw.preflight.data.columns import COLUMN_NAMES
from lfw.preflight.data.lengths import load_tokenizer
from lfw.recipe.vocabulary import FORMAT_ALIASES, FORMATS, STAGES, TAG_STYLES

if TYPE_CHECKING:
    from lfw.preflight.data.samples import Sample


def closest(word: str, options: Iterable[str]) -> str | None:
    """The nearest spelling among `options`, for "did you mean" hints."""
    import difflib  # only on the error path

    found = difflib.get_close_matches(word, list(options), n=1)
    return found[0] if found else None


def normalize_format_name(fmt: str | None) -> str | None:
    """Map aliases (dpo, llava, ...) to recipe format names; unknown names are a UserError."""
    if fmt is None:
        return None
    name = FORMAT_ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if name not in FORMATS:
        close = closest(name, FORMATS + tuple(FORMAT_ALIASES))
        hint = f"did you mean {close!r}? " if close else ""
        raise UserError([Problem("--format", f"unknown format {fmt!r}", f"{hint}use one of {', '.join(FORMATS)}")])
    return name


def _argument_problems(
    tags: str | None, columns: dict[str, str] | None, cutoff_len: int | None, has_tokenizer: bool, stage: str | None
) -> list[Problem]:
    bad: list[Problem] = []
    if tags is not None and tags not in TAG_STYLES:
        bad.append(Problem("tags", f"unknown tag style {tags!r}", f"use {' or '.join(TAG_STYLES)}"))
    for key in columns or {}:
        if key not in COLUMN_NAMES:
            close = closest(key, COLUMN_NAMES)
            bad.append(Problem(f"columns.{key}", "not a LLaMA-Factory column", f"did you mean {close!r}?"))
    if cutoff_len is not None and not has_tokenizer:
        bad.append(Problem("--cutoff-len", "needs a tokenizer to count tokens", "add --model MODEL_DIR"))
    if cutoff_len is not None and cutoff_len <= 0:
        bad.append(Problem("--cutoff-len", f"must be positive, got {cutoff_len}"))
    if stage is not None and stage not in STAGES:
        choices = f"{', '.join(STAGES[:-1])} or {STAGES[-1]}"
        bad.append(Problem("stage", f"unknown stage {stage!r}", f"use {choices} (the stages a recipe can run)"))
    return bad


@dataclass
class Options:
    """A check's validated arguments; `samples` collects every clean row when `read_samples` asks for them."""

    fmt: str | None
    tokenizer: Any
    cutoff_len: int | None
    media_dir: Path | None
    columns: dict[str, str] | None
    tags: str | None
    stage: str | None
    samples: list[Sample] | None = None

    @classmethod
    def build(
        cls,
        fmt: str | None,
        tokenizer_dir: str | os.PathLike[str] | None,
        cutoff_len: int | None,
        media_dir: str | os.PathLike[str] | None,
        columns: dict[str, str] | None,
        tags: str | None,
        stage: str | None,
    ) -> Options:
        name = normalize_format_name(fmt)
        bad = _argument_problems(tags, columns, cutoff_len, tokenizer_dir is not None, stage)
        if bad:
            raise UserError(bad)
        tok = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
        return cls(name, tok, cutoff_len, Path(media_dir) if media_dir else None, columns, tags, stage)
