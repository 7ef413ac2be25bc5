"""A dataset's layout: which LLaMA-Factory format, columns and tags its rows have, from the rows themselves.

`dataset_layout` is the one description of a file's columns: `lfw render` registers exactly it in dataset_info.json
and `lfw data check` checks every row against it. `resolve_format` picks the layout a check uses: the user's
dataset_info.json entry, else detection from the first rows, else the declared format read through the recipe's
`columns`; it also applies the stage rules of `lfw.recipe.vocabulary`.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.preflight.data.columns import (
    COLUMN_NAMES,
    FORMAT_DEFAULTS,
    LF_DEFAULT_COLUMNS,
    MEDIA,
    OPTIONAL_COLUMNS,
    ROLE_CONTENT_TAGS,
    SHAREGPT_TAGS,
    TAG_NAMES,
)
from lfw.preflight.data.options import Options
from lfw.preflight.data.readers import head_rows
from lfw.preflight.data.report import Sink
from lfw.recipe.vocabulary import FORMATS, KTO_STAGES, PREFERENCE_STAGES


@dataclass
class DataFormat:
    """A dataset's layout in LLaMA-Factory's own terms, so it can be registered in dataset_info.json as is.

    `columns` maps each LLaMA-Factory column attribute to the key in the data (None: not used) and `tags` the
    message tags; both follow `DatasetAttr.join`, where a `columns` or `tags` block replaces all defaults.
    """

    formatting: str = "alpaca"  # LLaMA-Factory `formatting`: alpaca | sharegpt | openai
    ranking: bool = False
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str | None] = field(default_factory=dict)
    style: str = "alpaca"  # how rows are shaped: alpaca | messages | text

    @property
    def kto(self) -> bool:
        return bool(self.columns.get("kto_tag"))

    @property
    def media(self) -> tuple[str, ...]:
        return tuple(kind for kind in MEDIA if self.columns.get(kind))

    @property
    def name(self) -> str:
        """The recipe's format name for this layout."""
        if self.kto:
            return "kto"
        if self.ranking:
            return "preference_sharegpt" if self.style == "messages" else "preference"
        if self.media:
            return "multimodal"
        if self.style == "messages":
            role_content = self.tags.get("role_tag") == "role" and self.columns.get("messages") == "messages"
            return "openai" if role_content else "sharegpt"
        return self.style

    def describe(self) -> str:
        """One line for the summary, e.g. `preference_sharegpt (conversations, from/value)`."""
        if self.style == "messages":
            bits = [
                str(self.columns.get("messages")),
                f"{self.tags.get('role_tag')}/{self.tags.get('content_tag')}",
            ]
        else:
            bits = [
                str(self.columns.get(k)) for k in ("prompt", "response", "chosen", "rejected") if self.columns.get(k)
            ]
        bits += [str(self.columns[k]) for k in ("kto_tag", *self.media) if self.columns.get(k)]
        return f"{self.name} ({', '.join(bits)})"

    def dataset_info_entry(self, file_name: str) -> dict[str, Any]:
        """The dataset_info.json entry that makes LLaMA-Factory read this data exactly as it was checked."""
        entry: dict[str, Any] = {"file_name": file_name}
        if self.formatting != "alpaca":
            entry["formatting"] = self.formatting
        if self.ranking:
            entry["ranking"] = True
        unread = ("messages",) if self.formatting == "alpaca" else ("prompt", "query", "response", "history")
        columns = {k: v for k, v in self.columns.items() if v and k not in unread}
        if columns != {k: v for k, v in LF_DEFAULT_COLUMNS.items() if k not in unread}:
            entry["columns"] = columns
        if self.style == "messages" and any(self.tags.get(k) != v for k, v in SHAREGPT_TAGS.items()):
            entry["tags"] = {k: v for k, v in self.tags.items() if v}
        return entry

    @classmethod
    def from_dataset_info(cls, entry: dict[str, Any]) -> DataFormat:
        """Read a dataset_info.json entry with LLaMA-Factory's defaulting rules (`DatasetAttr.join`)."""
        formatting = entry.get("formatting", "alpaca")
        if "columns" in entry:
            columns = {k: entry["columns"].get(k) for k in COLUMN_NAMES}
        elif formatting == "alpaca":
            columns = {k: None for k in COLUMN_NAMES} | {
                "prompt": "instruction",
                "query": "input",
                "response": "output",
            }
        else:
            columns = {k: None for k in COLUMN_NAMES} | {"messages": "conversations"}
        if formatting == "alpaca":
            columns["messages"] = None
        tags: dict[str, str | None] = dict(SHAREGPT_TAGS)
        if "tags" in entry:
            tags = {k: entry["tags"].get(k) for k in TAG_NAMES}
        style = "messages" if formatting != "alpaca" else alpaca_style(columns)
        return cls(formatting, bool(entry.get("ranking", False)), columns, tags, style)

    @classmethod
    def for_name(cls, name: str, tags: str | None = None) -> DataFormat:
        """The default layout of a recipe format name (used when the rows themselves say too little)."""
        default = FORMAT_DEFAULTS["formats"][name]
        formatting = default.get("formatting", "alpaca")
        style = tags or default.get("tags", "from_value")
        cols: dict[str, str | None] = {k: None for k in COLUMN_NAMES} | default.get("columns", {})
        if formatting != "alpaca":
            cols["messages"] = FORMAT_DEFAULTS["messages_column"][style]
        layout = "messages" if formatting != "alpaca" else alpaca_style(cols)
        tag_map = dict(FORMAT_DEFAULTS["tag_styles"][style])
        return cls(formatting, default.get("ranking", False), cols, tag_map, layout)


def alpaca_style(columns: dict[str, str | None]) -> str:
    """`text` for an alpaca-formatted layout that only has a prompt (pretraining), else `alpaca`."""
    only_prompt = columns.get("prompt") and not any(columns.get(k) for k in ("response", "chosen", "rejected"))
    return "text" if only_prompt and not columns.get("kto_tag") else "alpaca"


def present_columns(keys: Iterable[str], style: str) -> dict[str, str]:
    """Optional LLaMA-Factory columns that rows with these keys carry, attribute -> key.

    Registered only when some row has the key: LLaMA-Factory reads a column only when dataset_info.json names it,
    and raises KeyError for a named column that no row has. History and input exist only in alpaca rows.
    """
    keys = set(keys)
    found: dict[str, str] = {attr: attr for attr in ("system", "tools") if attr in keys}
    for kind in MEDIA:
        key = next((k for k in (kind, kind[:-1]) if k in keys), None)  # LLaVA files use the singular "image"
        if key:
            found[kind] = key
    if style == "alpaca":
        found |= {attr: key for attr, key in (("query", "input"), ("history", "history")) if key in keys}
    return found


# ----------------------------------------------------------------------------------------------- detection


def detect_format(rows: list[Any]) -> DataFormat | None:
    """Guess the layout from sample rows by their keys (majority wins); None when nothing fits."""
    dicts = [r for r in rows if isinstance(r, dict)]
    if not dicts:
        return None

    def count(pred: Callable[[dict], bool]) -> int:
        return sum(1 for r in dicts if pred(r))

    # a message column counts even when it holds the wrong type (a CSV string): rows then say what is wrong
    msg_counts = {k: sum(1 for r in dicts if k in r) for k in ("conversations", "messages")}
    msg_key = max(msg_counts, key=lambda k: msg_counts[k])
    alpaca_keys = ("instruction", "prompt", "output", "response")
    n_alpaca = count(lambda r: any(k in r for k in alpaca_keys) and not any(k in r for k in msg_counts))
    cols, ranking = _answer_columns(dicts)
    keys = {k for r in dicts for k in r}
    if msg_counts[msg_key] and msg_counts[msg_key] >= n_alpaca:
        cols |= {"messages": msg_key} | present_columns(keys, "messages")
        formatting, tag_map = _detect_tags(dicts, msg_key)
        return DataFormat(formatting, ranking, cols, tag_map, "messages")
    if n_alpaca:
        prompt = "instruction" if "instruction" in keys or "prompt" not in keys else "prompt"
        cols |= {"prompt": prompt} | present_columns(keys, "alpaca")
        if not ranking:
            cols["response"] = "output" if "output" in keys or "response" not in keys else "response"
        return DataFormat("alpaca", ranking, cols, dict(SHAREGPT_TAGS), "alpaca")
    if count(lambda r: isinstance(r.get("text"), str)):
        cols |= {"prompt": "text"} | present_columns(keys, "text")
        return DataFormat("alpaca", False, cols, dict(SHAREGPT_TAGS), "text")
    return None


def _answer_columns(dicts: list[dict]) -> tuple[dict[str, str | None], bool]:
    """All columns unset but the answers: chosen/rejected pairs (ranking) or a boolean kto tag (which wins)."""
    cols: dict[str, str | None] = {k: None for k in COLUMN_NAMES}
    ranking = any("chosen" in r and "rejected" in r for r in dicts)
    if ranking:
        cols |= {"chosen": "chosen", "rejected": "rejected"}
    for key in ("kto_tag", "label"):
        if any(isinstance(r.get(key), bool) for r in dicts):
            cols |= {"kto_tag": key, "chosen": None, "rejected": None}
            return cols, False
    return cols, ranking


def _count_tags(dicts: list[dict], msg_key: str) -> tuple[Counter[str], Counter[str], bool]:
    """How often messages use each tag key and each role name, and whether any has tool_calls."""
    keys: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    tool_calls = False
    for r in dicts:
        msgs = r.get(msg_key)
        for m in msgs if isinstance(msgs, list) else []:
            if isinstance(m, dict):
                keys.update(k for k in ("from", "role", "value", "content") if k in m)
                roles.update(m[k] for k in ("from", "role") if isinstance(m.get(k), str))
                tool_calls = tool_calls or bool(m.get("tool_calls"))
        for k in ("chosen", "rejected"):
            if isinstance(r.get(k), dict):
                keys.update(t for t in ("from", "role", "value", "content") if t in r[k])
    return keys, roles, tool_calls


def _detect_tags(dicts: list[dict], msg_key: str) -> tuple[str, dict[str, str | None]]:
    """Tag style and role vocabulary of messages: from/value or role/content, human/gpt or user/assistant."""
    keys, roles, tool_calls = _count_tags(dicts, msg_key)
    role_tag = "role" if keys["role"] > keys["from"] else "from"
    content_tag = "content" if keys["content"] > keys["value"] else "value"
    base = ROLE_CONTENT_TAGS if role_tag == "role" else SHAREGPT_TAGS
    tag_map: dict[str, str | None] = dict(base) | {"role_tag": role_tag, "content_tag": content_tag}
    for tag, options in (
        ("user_tag", ("human", "user")),
        ("assistant_tag", ("gpt", "assistant")),
        ("observation_tag", ("observation", "tool")),
        ("function_tag", ("function_call", "function")),
    ):
        seen = [o for o in options if roles[o]]
        if seen:
            tag_map[tag] = max(seen, key=lambda o: roles[o])
    formatting = "openai" if tool_calls else "sharegpt"
    return formatting, tag_map


# ----------------------------------------------------------------------------------------------- resolution


def declared_layout(opts: Options, keys: set[str] | None) -> DataFormat:
    """The recipe's format read through its `columns` (e.g. SFT on the `chosen` answers of preference pairs).

    `keys` are the keys the rows have: the format's optional columns follow them. None (no rows to look at)
    keeps the format's defaults.
    """
    assert opts.fmt is not None
    fmt = DataFormat.for_name(opts.fmt, opts.tags)
    if keys is not None:
        fmt.columns = {k: None if k in OPTIONAL_COLUMNS else v for k, v in fmt.columns.items()}
        fmt.columns |= present_columns(keys, fmt.style)
    fmt.columns |= opts.columns or {}
    return fmt


def compatible(declared: str, fmt: DataFormat) -> bool:
    """Whether data of layout `fmt` can be used as the recipe's `declared` format (lenient on tag style)."""
    plain = not fmt.ranking and not fmt.kto
    rules = {
        "sharegpt": fmt.style == "messages" and plain,
        "openai": fmt.style == "messages" and plain,
        "alpaca": fmt.style == "alpaca" and plain,
        "preference": fmt.ranking and fmt.style == "alpaca",
        "preference_sharegpt": fmt.ranking and fmt.style == "messages",
        "kto": fmt.kto,
        "multimodal": bool(fmt.media) and plain,
    }
    return rules.get(declared, fmt.style == "text")


def resolve_format(sample: list[Any], opts: Options, fixed: DataFormat | None, sink: Sink) -> DataFormat | None:
    """The layout to check rows against: dataset_info entry, else detection, else the declared format read
    through the recipe's `columns` (which also win over what detection found)."""
    if fixed is not None:
        fmt: DataFormat | None = fixed
        if opts.fmt is not None and not compatible(opts.fmt, fixed):
            sink.add(
                "error",
                "format-mismatch",
                f"declared format {opts.fmt!r}, but dataset_info.json registers {fixed.describe()}",
                "make the declared format and the registration agree",
            )
    else:
        fmt = _detected_layout(sample, opts, sink)
    if fmt is not None:
        _apply_options(fmt, opts, sink)
    return fmt


def _detected_layout(sample: list[Any], opts: Options, sink: Sink) -> DataFormat | None:
    fmt = detect_format(sample)
    if fmt is None and not sample:
        return None  # nothing readable: the parse error or "no rows" says it all
    if opts.fmt is not None and (fmt is None or (opts.columns and not compatible(opts.fmt, fmt))):
        # the declared format, read through the recipe's columns where the rows have another shape
        return declared_layout(opts, {str(k) for r in sample if isinstance(r, dict) for k in r})
    if fmt is None:
        keys = sorted({str(k) for r in sample if isinstance(r, dict) for k in r})[:12]
        seen = f"keys seen: {', '.join(keys)}" if keys else "no JSON objects among the first rows"
        sink.add(
            "error",
            "format-unknown",
            f"cannot tell the data format ({seen})",
            "rows need alpaca keys (instruction/output), a message list (conversations/messages), "
            "chosen/rejected, or text; or pass --format",
        )
        return None
    if opts.fmt is not None and not compatible(opts.fmt, fmt):
        hint = (
            f"use format {fmt.name}" if fmt.name in FORMATS else "fix the data or the declared format"
        ) + f" (or convert the data to {opts.fmt})"
        sink.add(
            "error",
            "format-mismatch",
            f"declared format {opts.fmt!r}, but the rows look like {fmt.describe()}",
            hint,
        )
    return fmt


def _apply_options(fmt: DataFormat, opts: Options, sink: Sink) -> None:
    """The recipe's tag style and columns win over the layout; then the stage fit and the openai caveat."""
    if opts.tags is not None and fmt.style == "messages":
        fmt.tags = dict(SHAREGPT_TAGS if opts.tags == "from_value" else ROLE_CONTENT_TAGS)
    if opts.columns:
        fmt.columns = dict(fmt.columns) | dict(opts.columns)
    if opts.stage is not None:
        check_stage(opts.stage, fmt, sink)
    if fmt.formatting == "openai":
        sink.add(
            "warning",
            "openai-system",
            "rows with tool_calls are read by LLaMA-Factory 0.9.5's openai converter, which appends "
            "'detailed thinking off' to the system prompt of rows without tools (and makes it the system prompt "
            "where there is none)",
            "to keep system prompts as written, store tool calls as sharegpt function_call messages",
        )


def check_stage(stage: str, fmt: DataFormat, sink: Sink) -> None:
    """LLaMA-Factory refuses ranking data outside dpo/rm and vice versa; kto needs a boolean kto tag."""
    pairs = " or ".join(PREFERENCE_STAGES)
    if stage in PREFERENCE_STAGES and not fmt.ranking:
        sink.add(
            "error",
            "stage-mismatch",
            f"stage {stage} needs chosen/rejected pairs, but this is {fmt.name}",
            f"use a preference dataset (chosen/rejected) for {'/'.join(PREFERENCE_STAGES)}",
        )
    elif stage not in PREFERENCE_STAGES and fmt.ranking:
        sink.add(
            "error",
            "stage-mismatch",
            f"stage {stage} cannot train on preference pairs ({fmt.name})",
            f"use stage {pairs}, or an SFT dataset",
        )
    elif stage in KTO_STAGES and not fmt.kto:
        sink.add(
            "error",
            "stage-mismatch",
            f"stage {stage} needs a boolean kto tag per row, but this is {fmt.name}",
            "add a `label: true/false` field (registered as kto_tag)",
        )


def dataset_layout(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    columns: dict[str, str] | None = None,
    tags: str | None = None,
    rows: list[Any] | None = None,
) -> DataFormat:
    """The layout `lfw data check` reads `path` with (the recipe's format, columns, tags), from its first rows.

    Its `dataset_info_entry` is what dataset_info.json must register: every LLaMA-Factory column the data has and
    none it lacks. A path that does not exist here (rendering for another machine) or whose rows say too little
    gets the format's defaults plus `columns`; `lfw run` checks the real file before any stage starts. `rows`:
    the first rows read elsewhere (a hub dataset's cache), `path` then only names the data.
    """
    opts = Options.build(fmt, None, None, None, columns, tags, None)
    p = Path(path)
    sample = rows if rows is not None else head_rows(p) if p.exists() else []
    found = resolve_format(sample, opts, None, Sink(str(p))) if sample else None
    if found is not None:
        return found
    if opts.fmt is None:
        raise UserError([Problem(str(p), "cannot tell the data format", "give the dataset a format")])
    return declared_layout(opts, None)
