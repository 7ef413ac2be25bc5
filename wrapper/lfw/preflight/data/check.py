"""Dataset checks before any GPU time: container, format, every row, media files and token lengths.

LLaMA-Factory reacts to bad data late and quietly: a malformed row is skipped with one log line ("Invalid role
tag", "Dropped invalid example"), an `<image>` count mismatch crashes the run mid-epoch, and a `datasets`
`save_to_disk` folder is not loadable at all. This module finds all of that up front and names each row (file,
1-based row, line) together with its fix. The rules mirror LLaMA-Factory 0.9.5 (`data/converter.py`,
`data/parser.py`, `data/mm_plugin.py`), so a file that passes here is read by LLaMA-Factory as intended.
`dataset_layout` is the one description of a file's columns: `lfw render` registers exactly it in dataset_info.json,
and `read_samples` gives the checked rows in LLaMA-Factory's aligned form (for the behaviour oracle).

Pure logic: no click, no torch/transformers/pandas; pyarrow and tokenizers are imported only when a Parquet or
Arrow file or a tokenizer is actually used, so `lfw data check` on JSON starts instantly.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError

# Format names as recipes spell them (`datasets[].format`), plus forgiving aliases for the command line.
FORMATS = ("alpaca", "sharegpt", "openai", "preference", "preference_sharegpt", "kto", "multimodal", "text")
FORMAT_ALIASES = {
    "dpo": "preference",
    "pairwise": "preference",
    "ranking": "preference",
    "llava": "multimodal",
    "mllm": "multimodal",
    "messages": "openai",
    "pt": "text",
}
TAG_STYLES = ("from_value", "role_content")

# LLaMA-Factory's column attributes (DatasetAttr) and tag attributes, in its own order.
COLUMN_NAMES = (
    "prompt", "query", "response", "history", "messages", "system", "tools",
    "images", "videos", "audios", "chosen", "rejected", "kto_tag",
)  # fmt: skip
TAG_NAMES = (
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
)
MEDIA = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}
# Columns a row may leave out; the others (prompt, response, messages, chosen, rejected, kto_tag) are the data.
OPTIONAL_COLUMNS = ("query", "history", "system", "tools", *MEDIA)
# LLaMA-Factory's columns when a dataset_info entry has no "columns" block (DatasetAttr's defaults).
LF_DEFAULT_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "messages": "conversations"}

# Extensions LLaMA-Factory loads (extras/constants.py FILEEXT2TYPE), mapped to our container names.
FILE_TYPES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
FILE_TYPES[".txt"] = "text"

# The recipe formats' default layouts and the two message tag styles: data, shipped in the package.
_DEFAULTS = json.loads(
    (resources.files("lfw") / "assets" / "dataset_info" / "formats.json").read_text(encoding="utf-8")
)
SHAREGPT_TAGS: dict[str, str | None] = _DEFAULTS["tag_styles"]["from_value"]  # also LLaMA-Factory's defaults
ROLE_CONTENT_TAGS: dict[str, str | None] = _DEFAULTS["tag_styles"]["role_content"]

SAMPLE_ROWS = 200  # rows read before deciding the format of a file
MAX_STORED_PROBLEMS = 2000  # problems kept per report; counts stay exact beyond it
LENGTH_NOTE = "approximate: ChatML wrapping, media counted as their tag text"
SAVE_TO_DISK_FIX = (
    "`lfw run` converts it to JSONL for you; to do it by hand: lfw data convert {path} OUT.jsonl "
    "(or in Python: datasets.load_from_disk(path)['train'].to_json('train.jsonl'))"
)


# ----------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class DataProblem(Problem):
    """A `Problem` with a severity and a stable code, so callers can filter and tests can assert."""

    severity: str = "error"  # "error" (LLaMA-Factory drops the row or crashes) or "warning"
    code: str = ""
    row: int | None = None
    line: int | None = None


@dataclass
class LengthStats:
    """Token lengths of the rendered rows; the basis for picking cutoff_len (seed 003's OOM ladder)."""

    count: int
    p50: int
    p90: int
    p95: int
    p99: int
    max: int
    mean: float
    suggested_cutoff_len: int  # covers 95% of rows, rounded up to 64 (<= 1024) or 128
    cutoff_len: int | None = None
    over_cutoff: int = 0  # rows longer than cutoff_len (LLaMA-Factory truncates them)
    note: str = LENGTH_NOTE


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
        style = "messages" if formatting != "alpaca" else _alpaca_style(columns)
        return cls(formatting, bool(entry.get("ranking", False)), columns, tags, style)

    @classmethod
    def for_name(cls, name: str, tags: str | None = None) -> DataFormat:
        """The default layout of a recipe format name (used when the rows themselves say too little)."""
        default = _DEFAULTS["formats"][name]
        formatting = default.get("formatting", "alpaca")
        style = tags or default.get("tags", "from_value")
        cols: dict[str, str | None] = {k: None for k in COLUMN_NAMES} | default.get("columns", {})
        if formatting != "alpaca":
            cols["messages"] = _DEFAULTS["messages_column"][style]
        layout = "messages" if formatting != "alpaca" else _alpaca_style(cols)
        return cls(formatting, default.get("ranking", False), cols, dict(_DEFAULTS["tag_styles"][style]), layout)


@dataclass
class DataReport:
    """Everything `lfw data check` found; `lfw run` calls `raise_for_errors()` before launching."""

    path: Path
    container: str  # json | jsonl | csv | parquet | arrow | text | rows | save_to_disk | folder | dataset_dir
    format: str | None  # recipe format name; "mixed" for a folder of differently shaped files
    rows: int
    problems: list[DataProblem] = field(default_factory=list)
    lengths: LengthStats | None = None
    data_format: DataFormat | None = None
    parts: list[DataReport] = field(default_factory=list)  # one per file or split of a folder
    skipped: list[str] = field(default_factory=list)
    error_count: int = 0  # exact, even where `problems` was capped at MAX_STORED_PROBLEMS
    warning_count: int = 0
    code_counts: dict[str, int] = field(default_factory=dict)
    raw_lengths: list[int] = field(default_factory=list, repr=False)  # per row, for merging folder parts

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    @property
    def needs_conversion(self) -> bool:
        """True for `save_to_disk` folders: LLaMA-Factory cannot load them; see `convert_to_jsonl`."""
        return self.container == "save_to_disk"

    def raise_for_errors(self, limit: int = 20) -> None:
        """Raise one `UserError` listing the first `limit` errors, so a bad dataset never reaches a GPU."""
        if not self.error_count:
            return
        shown: list[Problem] = list(self.errors[:limit])
        if self.error_count > len(shown):
            more = self.error_count - len(shown)
            shown.append(Problem(str(self.path), f"... and {more} more errors", f"lfw data check {self.path}"))
        raise UserError(shown, title=f"{self.path}: {self.error_count} data error(s) in {self.rows} rows")


# ----------------------------------------------------------------------------------------------- public API


def check_dataset(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    cutoff_len: int | None = None,
    *,
    media_dir: str | os.PathLike[str] | None = None,
    columns: dict[str, str] | None = None,
    tags: str | None = None,
    stage: str | None = None,
) -> DataReport:
    """Check a data file or folder; `fmt`, `columns`, `tags`, `media_dir` are the recipe's dataset fields.

    Raises `UserError` only for unusable arguments (missing path, unknown format, no tokenizer.json); every
    problem in the data itself lands in the returned report.
    """
    return _check_path(Path(path), _Options.build(fmt, tokenizer_dir, cutoff_len, media_dir, columns, tags, stage))


def _check_path(p: Path, opts: _Options) -> DataReport:
    if not p.exists():
        raise UserError(
            [Problem(str(p), "no such file or folder", "check the path (relative to the current directory)")]
        )
    if p.name == "dataset_info.json" and p.is_file() and _is_lf_dataset_dir(p.parent) is not None:
        p = p.parent  # the registry itself: check what it registers
    return _check_dir(p, opts) if p.is_dir() else _check_file(p, opts)


def check_rows(
    rows: Iterable[Any],
    fmt: str | None = None,
    *,
    name: str = "<rows>",
    media_dir: str | os.PathLike[str] | None = None,
    columns: dict[str, str] | None = None,
    tags: str | None = None,
    stage: str | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    cutoff_len: int | None = None,
) -> DataReport:
    """Check rows already in memory (any JSON values); row numbers are 1-based positions."""
    opts = _Options.build(fmt, tokenizer_dir, cutoff_len, media_dir, columns, tags, stage)
    records = (_Rec(i, None, row) for i, row in enumerate(rows, 1))
    return _check_records(Path(name), name, "rows", records, opts, Path(media_dir or "."))


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
      when there is neither system nor tools, "\ndetailed thinking off" or "\n" appended otherwise.
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


def read_samples(
    path: str | os.PathLike[str],
    fmt: str | None = None,
    *,
    columns: dict[str, str] | None = None,
    tags: str | None = None,
    media_dir: str | os.PathLike[str] | None = None,
    stage: str | None = None,
) -> list[Sample]:
    """Every row of `path` that `check_dataset` passes, as LLaMA-Factory will train on it (see `Sample`).

    Arguments as in `check_dataset` (the recipe's dataset fields); rows with errors are left out, so compare
    by `Sample.row`. `media_dir` defaults to the data file's folder, the media_dir lfw renders for it.
    """
    opts = _Options.build(fmt, None, None, media_dir, columns, tags, stage)
    opts.samples = []
    _check_path(Path(path), opts)
    return opts.samples


def detect_format(rows: list[Any]) -> DataFormat | None:
    """Guess the layout from sample rows by their keys (majority wins); None when nothing fits."""
    dicts = [r for r in rows if isinstance(r, dict)]
    if not dicts:
        return None

    def count(pred: Any) -> int:
        return sum(1 for r in dicts if pred(r))

    def any_key(key: str) -> bool:
        return any(key in r for r in dicts)

    # a message column counts even when it holds the wrong type (a CSV string): rows then say what is wrong
    msg_counts = {k: count(lambda r, k=k: k in r) for k in ("conversations", "messages")}
    msg_key = max(msg_counts, key=lambda k: msg_counts[k])
    n_messages = msg_counts[msg_key]
    alpaca_keys = ("instruction", "prompt", "output", "response")
    n_alpaca = count(lambda r: any(k in r for k in alpaca_keys) and not any(k in r for k in msg_counts))
    n_text = count(lambda r: isinstance(r.get("text"), str))
    cols: dict[str, str | None] = {k: None for k in COLUMN_NAMES}
    ranking = count(lambda r: "chosen" in r and "rejected" in r) > 0
    if ranking:
        cols |= {"chosen": "chosen", "rejected": "rejected"}
    for key in ("kto_tag", "label"):
        if any(isinstance(r.get(key), bool) for r in dicts):
            cols["kto_tag"] = key
            ranking = False
            cols |= {"chosen": None, "rejected": None}
            break
    keys = {k for r in dicts for k in r}
    if n_messages and n_messages >= n_alpaca:
        cols |= {"messages": msg_key} | _present_columns(keys, "messages")
        formatting, tag_map = _detect_tags(dicts, msg_key)
        return DataFormat(formatting, ranking, cols, tag_map, "messages")
    if n_alpaca:
        prompt = "instruction" if any_key("instruction") or not any_key("prompt") else "prompt"
        response = "output" if any_key("output") or not any_key("response") else "response"
        cols |= {"prompt": prompt} | _present_columns(keys, "alpaca")
        if not ranking:
            cols["response"] = response
        return DataFormat("alpaca", ranking, cols, dict(SHAREGPT_TAGS), "alpaca")
    if n_text:
        cols |= {"prompt": "text"} | _present_columns(keys, "text")
        return DataFormat("alpaca", False, cols, dict(SHAREGPT_TAGS), "text")
    return None


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
    opts = _Options.build(fmt, None, None, None, columns, tags, None)
    p = Path(path)
    sample = rows if rows is not None else _head_rows(p) if p.exists() else []
    found = _resolve_format(sample, opts, None, _Sink(str(p))) if sample else None
    if found is not None:
        return found
    if opts.fmt is None:
        raise UserError([Problem(str(p), "cannot tell the data format", "give the dataset a format")])
    return _declared_layout(opts, None)


def convert_to_jsonl(path: str | os.PathLike[str], out: str | os.PathLike[str], split: str | None = None) -> Path:
    """Write any supported container (above all `save_to_disk` folders) as JSONL that LLaMA-Factory loads.

    Embedded media (Parquet/Arrow image structs with bytes) are written next to `out` in `<stem>_media/` and
    replaced by relative paths, so `<image>` rows keep working. For a DatasetDict, `split` picks the split
    (default: `train`, or the only one).
    """
    src, dst = Path(path), Path(out)
    if not src.exists():
        raise UserError([Problem(str(src), "no such file or folder")])
    sink = _Sink(str(src))
    records = _records_for_convert(src, split, sink)
    media_dir = dst.parent / f"{dst.stem}_media"
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            if rec.ok:
                row = _externalize_bytes(rec.value, media_dir, dst.parent)
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    if sink.error_count:
        tmp.unlink(missing_ok=True)
        raise UserError(list(sink.problems[:20]), title=f"cannot convert {src}")
    tmp.replace(dst)
    return dst


def render_chatml(system: str, tools: str, turns: list[tuple[str, str]]) -> str:
    """Approximate ChatML rendering of a conversation: good enough for length statistics, not for training."""
    names = {"user": "user", "assistant": "assistant", "observation": "tool", "function": "assistant"}
    sys_text = system + (f"\n\n# Tools\n{tools}" if tools else "")
    parts = [f"<|im_start|>system\n{sys_text}<|im_end|>\n"] if sys_text else []
    parts += [f"<|im_start|>{names.get(role, role)}\n{content}<|im_end|>\n" for role, content in turns]
    return "".join(parts)


def normalize_format_name(fmt: str | None) -> str | None:
    """Map aliases (dpo, llava, ...) to recipe format names; unknown names are a UserError."""
    if fmt is None:
        return None
    name = FORMAT_ALIASES.get(fmt.strip().lower(), fmt.strip().lower())
    if name not in FORMATS:
        close = _closest(name, FORMATS + tuple(FORMAT_ALIASES))
        hint = f"did you mean {close!r}? " if close else ""
        raise UserError([Problem("--format", f"unknown format {fmt!r}", f"{hint}use one of {', '.join(FORMATS)}")])
    return name


# ----------------------------------------------------------------------------------------------- internals


@dataclass
class _Rec:
    """One row as read: 1-based index, line (JSON/JSONL/CSV) and value; ok=False after a parse error."""

    index: int
    line: int | None
    value: Any
    ok: bool = True


@dataclass
class _Options:
    fmt: str | None
    tokenizer: Any
    cutoff_len: int | None
    media_dir: Path | None
    columns: dict[str, str] | None
    tags: str | None
    stage: str | None
    samples: list[Sample] | None = None  # read_samples collects every clean row here

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
    ) -> _Options:
        name = normalize_format_name(fmt)
        bad: list[Problem] = []
        if tags is not None and tags not in TAG_STYLES:
            bad.append(Problem("tags", f"unknown tag style {tags!r}", f"use {' or '.join(TAG_STYLES)}"))
        for key in columns or {}:
            if key not in COLUMN_NAMES:
                close = _closest(key, COLUMN_NAMES)
                bad.append(Problem(f"columns.{key}", "not a LLaMA-Factory column", f"did you mean {close!r}?"))
        if cutoff_len is not None and tokenizer_dir is None:
            bad.append(Problem("--cutoff-len", "needs a tokenizer to count tokens", "add --model MODEL_DIR"))
        if cutoff_len is not None and cutoff_len <= 0:
            bad.append(Problem("--cutoff-len", f"must be positive, got {cutoff_len}"))
        if stage is not None and stage not in ("sft", "pt", "dpo", "rm", "kto", "ppo"):
            bad.append(Problem("stage", f"unknown stage {stage!r}", "use sft, pt, dpo, rm, kto or ppo"))
        if bad:
            raise UserError(bad)
        tok = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
        return cls(name, tok, cutoff_len, Path(media_dir) if media_dir else None, columns, tags, stage)


class _Sink:
    """Collects problems: exact counts, but a capped stored list so a broken 1M-row file stays cheap."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.problems: list[DataProblem] = []
        self.error_count = 0
        self.warning_count = 0
        self.codes: Counter[str] = Counter()

    def add(
        self,
        severity: str,
        code: str,
        message: str,
        fix: str = "",
        row: int | None = None,
        line: int | None = None,
        where: str | None = None,
    ) -> None:
        if severity == "error":
            self.error_count += 1
        else:
            self.warning_count += 1
        self.codes[code] += 1
        if len(self.problems) < MAX_STORED_PROBLEMS:
            where = where or _where(self.name, row, line)
            self.problems.append(DataProblem(where, message, fix, severity, code, row, line))

    def extend(self, other: DataReport) -> None:
        self.error_count += other.error_count
        self.warning_count += other.warning_count
        self.codes.update(other.code_counts)
        room = MAX_STORED_PROBLEMS - len(self.problems)
        self.problems.extend(other.problems[: max(room, 0)])


def _where(name: str, row: int | None, line: int | None) -> str:
    text = name if row is None else f"{name} row {row}"
    return f"{text} (line {line})" if line is not None else text


def _closest(word: str, options: Iterable[str]) -> str | None:
    import difflib  # only on the error path

    found = difflib.get_close_matches(word, list(options), n=1)
    return found[0] if found else None


def _alpaca_style(columns: dict[str, str | None]) -> str:
    only_prompt = columns.get("prompt") and not any(columns.get(k) for k in ("response", "chosen", "rejected"))
    return "text" if only_prompt and not columns.get("kto_tag") else "alpaca"


def _present_columns(keys: Iterable[str], style: str) -> dict[str, str]:
    """Optional LLaMA-Factory columns that rows with these keys carry, attribute -> key.

    Registered only when some row has the key: LLaMA-Factory reads a column only when dataset_info.json names it,
    and raises KeyError for a named column that no row has. History and input exist only in alpaca rows.
    """
    keys = set(keys)
    found = {attr: attr for attr in ("system", "tools") if attr in keys}
    for kind in MEDIA:
        key = next((k for k in (kind, kind[:-1]) if k in keys), None)  # LLaVA files use the singular "image"
        if key:
            found[kind] = key
    if style == "alpaca":
        found |= {attr: key for attr, key in (("query", "input"), ("history", "history")) if key in keys}
    return found


def _declared_layout(opts: _Options, keys: set[str] | None) -> DataFormat:
    """The recipe's format read through its `columns` (e.g. SFT on the `chosen` answers of preference pairs).

    `keys` are the keys the rows have: the format's optional columns follow them. None (no rows to look at)
    keeps the format's defaults.
    """
    assert opts.fmt is not None
    fmt = DataFormat.for_name(opts.fmt, opts.tags)
    if keys is not None:
        fmt.columns = {k: None if k in OPTIONAL_COLUMNS else v for k, v in fmt.columns.items()}
        fmt.columns |= _present_columns(keys, fmt.style)
    fmt.columns |= opts.columns or {}
    return fmt


def _detect_tags(dicts: list[dict], msg_key: str) -> tuple[str, dict[str, str | None]]:
    """Tag style and role vocabulary of messages: from/value or role/content, human/gpt or user/assistant."""
    keys: Counter[str] = Counter()
    roles: Counter[str] = Counter()
    tool_calls = False
    for r in dicts:
        msgs = r.get(msg_key)
        if not isinstance(msgs, list):
            continue
        for m in msgs:
            if isinstance(m, dict):
                keys.update(k for k in ("from", "role", "value", "content") if k in m)
                for k in ("from", "role"):
                    if isinstance(m.get(k), str):
                        roles[m[k]] += 1
                tool_calls = tool_calls or bool(m.get("tool_calls"))
        for k in ("chosen", "rejected"):
            if isinstance(r.get(k), dict):
                keys.update(t for t in ("from", "role", "value", "content") if t in r[k])
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


def _compatible(declared: str, fmt: DataFormat) -> bool:
    """Whether data of layout `fmt` can be used as the recipe's `declared` format (lenient on tag style)."""
    if declared in ("sharegpt", "openai"):
        return fmt.style == "messages" and not fmt.ranking and not fmt.kto
    if declared == "alpaca":
        return fmt.style == "alpaca" and not fmt.ranking and not fmt.kto
    if declared == "preference":
        return fmt.ranking and fmt.style == "alpaca"
    if declared == "preference_sharegpt":
        return fmt.ranking and fmt.style == "messages"
    if declared == "kto":
        return fmt.kto
    if declared == "multimodal":
        return bool(fmt.media) and not fmt.ranking and not fmt.kto
    return fmt.style == "text"


def _resolve_format(sample: list[Any], opts: _Options, fixed: DataFormat | None, sink: _Sink) -> DataFormat | None:
    """The layout to check rows against: dataset_info entry, else detection, else the declared format read
    through the recipe's `columns` (which also win over what detection found)."""
    fmt: DataFormat | None
    if fixed is not None:
        fmt = fixed
        if opts.fmt is not None and not _compatible(opts.fmt, fmt):
            sink.add(
                "error",
                "format-mismatch",
                f"declared format {opts.fmt!r}, but dataset_info.json registers {fmt.describe()}",
                "make the declared format and the registration agree",
            )
    else:
        fmt = detect_format(sample)
        if fmt is None and not sample:
            return None  # nothing readable: the parse error or "no rows" says it all
        if opts.fmt is not None and (fmt is None or (opts.columns and not _compatible(opts.fmt, fmt))):
            # the declared format, read through the recipe's columns where the rows have another shape
            keys = {str(k) for r in sample if isinstance(r, dict) for k in r}
            fmt = _declared_layout(opts, keys)
        elif fmt is None:
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
        elif opts.fmt is not None and not _compatible(opts.fmt, fmt):
            hint = (
                f"use format {fmt.name}" if fmt.name in FORMATS else "fix the data or the declared format"
            ) + f" (or convert the data to {opts.fmt})"
            sink.add(
                "error",
                "format-mismatch",
                f"declared format {opts.fmt!r}, but the rows look like {fmt.describe()}",
                hint,
            )
    if opts.tags is not None and fmt.style == "messages":
        wanted = SHAREGPT_TAGS if opts.tags == "from_value" else ROLE_CONTENT_TAGS
        fmt.tags = dict(wanted)
    if opts.columns:
        fmt.columns = dict(fmt.columns) | dict(opts.columns)
    if opts.stage is not None:
        _check_stage(opts.stage, fmt, sink)
    if fmt.formatting == "openai":
        sink.add(
            "warning",
            "openai-system",
            "rows with tool_calls are read by LLaMA-Factory 0.9.5's openai converter, which appends "
            "'detailed thinking off' to the system prompt of rows without tools (and makes it the system prompt "
            "where there is none)",
            "to keep system prompts as written, store tool calls as sharegpt function_call messages",
        )
    return fmt


def _check_stage(stage: str, fmt: DataFormat, sink: _Sink) -> None:
    """LLaMA-Factory refuses ranking data outside dpo/rm and vice versa; kto needs a boolean kto tag."""
    if stage in ("dpo", "rm") and not fmt.ranking:
        sink.add(
            "error",
            "stage-mismatch",
            f"stage {stage} needs chosen/rejected pairs, but this is {fmt.name}",
            "use a preference dataset (chosen/rejected) for dpo/rm",
        )
    elif stage not in ("dpo", "rm") and fmt.ranking:
        sink.add(
            "error",
            "stage-mismatch",
            f"stage {stage} cannot train on preference pairs ({fmt.name})",
            "use stage dpo or rm, or an SFT dataset",
        )
    elif stage == "kto" and not fmt.kto:
        sink.add(
            "error",
            "stage-mismatch",
            f"stage kto needs a boolean kto tag per row, but this is {fmt.name}",
            "add a `label: true/false` field (registered as kto_tag)",
        )


# ----------------------------------------------------------------------------------------------- containers


def _check_file(
    path: Path, opts: _Options, fixed: DataFormat | None = None, media_dir: Path | None = None
) -> DataReport:
    name = str(path)
    container = FILE_TYPES.get(path.suffix.lower())
    if container is None:
        sink = _Sink(name)
        sink.add(
            "error",
            "container",
            f"unsupported file type {path.suffix or '(none)'!r}",
            "LLaMA-Factory loads .json, .jsonl, .csv, .parquet, .arrow and .txt; convert the data to JSONL",
        )
        return _report(path, "unknown", None, 0, sink)
    sink = _Sink(name)
    meta: dict[str, str] = {}
    records = _read_file(path, container, sink, meta)
    media = media_dir or opts.media_dir or path.parent
    report = _check_records(path, name, container, records, opts, media, fixed, sink)
    report.container = meta.get("container", report.container)  # a .json file may hold JSON lines
    return report


def _read_file(path: Path, container: str, sink: _Sink, meta: dict[str, str] | None = None) -> Iterator[_Rec]:
    if container == "json":
        return _read_json(path, sink, meta if meta is not None else {})
    readers = {"jsonl": _read_jsonl, "csv": _read_csv, "text": _read_text, "parquet": _read_parquet}
    return readers.get(container, _read_arrow)(path, sink)


_WS = re.compile(r"[ \t\n\r]*")


def _json_hint(err: json.JSONDecodeError) -> str:
    """Turn json's terse messages into the usual cause."""
    msg = err.msg
    nxt = err.doc[err.pos : err.pos + 1] if err.doc else ""
    if err.doc is not None and err.pos >= len(err.doc.rstrip()):
        return "the JSON ends too early (a closing brace, bracket or quote is missing)"
    if msg.startswith("Expecting value") and nxt in ("]", "}"):
        return "trailing comma before the closing bracket"
    if msg.startswith("Expecting property name"):
        return "keys need double quotes; no trailing comma after the last key"
    if msg.startswith("Expecting ',' delimiter"):
        return "a comma is missing between two items, or a string contains an unescaped quote"
    if msg.startswith("Invalid control character"):
        return "a raw newline or tab inside a string; escape it as \\n / \\t"
    if msg.startswith("Unterminated string"):
        return "a string is not closed (missing quote)"
    return "fix the JSON syntax at that spot"


def _read_json(path: Path, sink: _Sink, meta: dict[str, str], prefix: int | None = None) -> Iterator[_Rec]:
    """A JSON array, read element by element so every row knows its line; JSON lines in .json also work.

    With `prefix`, only the rows within that many leading bytes (the head, for registering columns).
    """
    try:
        if prefix is None:
            text = path.read_bytes().decode("utf-8-sig")
        else:
            with path.open("rb") as fh:
                text = fh.read(prefix).decode("utf-8-sig", errors="ignore")  # may end mid-character
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        sink.add("error", "encoding", f"not UTF-8 (byte {err.start})", "save the file as UTF-8", line=line)
        return
    dec = json.JSONDecoder()
    pos = _WS.match(text, 0).end()  # type: ignore[union-attr]
    if pos == len(text):
        sink.add("error", "empty-dataset", "the file is empty", "write a JSON list of rows, or use JSONL")
        return
    if text[pos] == "{":
        yield from _read_json_objects(text, pos, dec, sink, meta)
        return
    if text[pos] != "[":
        line = text.count("\n", 0, pos) + 1
        sink.add(
            "error",
            "parse",
            "expected a JSON list of rows ('[')",
            "write [ {row}, {row}, ... ] or JSONL",
            line=line,
        )
        return
    line, last = 1, 0
    pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
    index = 0
    if text[pos : pos + 1] == "]":
        return
    while True:
        line += text.count("\n", last, pos)
        last = pos
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            sink.add(
                "error",
                "parse",
                f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}",
                _json_hint(err) + "; nothing after this point can be read",
                row=index + 1,
                line=err.lineno,
            )
            return
        index += 1
        yield _Rec(index, line, value)
        pos = _WS.match(text, end).end()  # type: ignore[union-attr]
        ch = text[pos : pos + 1]
        if ch == ",":
            pos = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            if text[pos : pos + 1] == "]":
                bad = text.count("\n", 0, pos) + 1
                sink.add(
                    "error",
                    "parse",
                    f"trailing comma before ']' at line {bad}",
                    "remove the comma after the last row (strict JSON forbids it)",
                    line=bad,
                )
                return
            continue
        if ch == "]":
            rest = _WS.match(text, pos + 1).end()  # type: ignore[union-attr]
            if rest != len(text):
                bad = text.count("\n", 0, rest) + 1
                sink.add(
                    "error",
                    "parse",
                    f"extra content after the closing ']' at line {bad}",
                    "keep one JSON list per file",
                    line=bad,
                )
            return
        bad = text.count("\n", 0, pos) + 1
        what = "end of file" if not ch else repr(ch)
        sink.add(
            "error",
            "parse",
            f"expected ',' or ']' after row {index} at line {bad}, found {what}",
            "a comma is missing between rows, or the list is not closed",
            row=index,
            line=bad,
        )
        return


def _read_json_objects(text: str, pos: int, dec: json.JSONDecoder, sink: _Sink, meta: dict[str, str]) -> Iterator[_Rec]:
    """A .json file starting with '{': one object (not a dataset) or JSON lines (datasets reads those too)."""
    try:
        _, end = dec.raw_decode(text, pos)
    except json.JSONDecodeError:
        end = -1
    after = _WS.match(text, end).end() if end >= 0 else 0  # type: ignore[union-attr]
    if end >= 0 and after == len(text):
        sink.add(
            "error",
            "parse",
            "the top level is a single JSON object, not a list of rows",
            "wrap the rows in a list [ ... ], or write one row per line (JSONL)",
            line=1,
        )
        return
    meta["container"] = "jsonl"
    yield from _jsonl_lines(text.splitlines(), sink)


def _read_jsonl(path: Path, sink: _Sink) -> Iterator[_Rec]:
    """JSON lines, streamed; a bad line is reported with its number and reading goes on with the next one."""
    with path.open("rb") as fh:
        yield from _jsonl_lines(fh, sink)


def _jsonl_lines(lines: Iterable[bytes | str], sink: _Sink) -> Iterator[_Rec]:
    index = 0
    for lineno, raw in enumerate(lines, 1):
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as err:
                index += 1
                sink.add(
                    "error",
                    "encoding",
                    f"not UTF-8 (byte {err.start} of the line)",
                    "save the file as UTF-8",
                    row=index,
                    line=lineno,
                )
                yield _Rec(index, lineno, None, ok=False)
                continue
        if not raw.strip():
            continue
        index += 1
        try:
            value = json.loads(raw.strip())
        except json.JSONDecodeError as err:
            sink.add(
                "error",
                "parse",
                f"invalid JSON (column {err.colno}): {err.msg}",
                _json_hint(err) + "; each line must be one complete JSON object",
                row=index,
                line=lineno,
            )
            yield _Rec(index, lineno, None, ok=False)
            continue
        yield _Rec(index, lineno, value)


def _read_csv(path: Path, sink: _Sink) -> Iterator[_Rec]:
    """CSV rows with their first line; cells are strings, so only flat formats (alpaca, text) fit."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            start = 2
            for index, row in enumerate(reader, 1):
                row.pop(None, None)  # type: ignore[call-overload]  # surplus cells without a header
                yield _Rec(index, start, {k: v for k, v in row.items() if k is not None})
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        sink.add("error", "encoding", f"not UTF-8 (byte {err.start})", "save the file as UTF-8")
    except csv.Error as err:
        sink.add("error", "parse", f"invalid CSV: {err}", "check quoting of multi-line cells")


def _read_text(path: Path, sink: _Sink) -> Iterator[_Rec]:
    """Plain text for pretraining: LLaMA-Factory reads one `text` row per line."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            index = 0
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    index += 1
                    yield _Rec(index, lineno, {"text": line.rstrip("\n")})
    except UnicodeDecodeError as err:
        sink.add("error", "encoding", f"not UTF-8 (byte {err.start})", "save the file as UTF-8")


def _pyarrow(sink: _Sink) -> Any:
    try:
        import pyarrow  # lazy: only Parquet/Arrow need it
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        sink.add("error", "container", "reading Parquet/Arrow needs pyarrow", "pip install pyarrow")
        return None
    return pyarrow


def _read_parquet(path: Path, sink: _Sink) -> Iterator[_Rec]:
    pa = _pyarrow(sink)
    if pa is None:
        return
    try:
        pf = pa.parquet.ParquetFile(str(path))
        index = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                index += 1
                yield _Rec(index, None, row)
    except (pa.ArrowException, OSError) as err:
        sink.add(
            "error",
            "container",
            f"cannot read Parquet: {err}",
            "re-export the file (pyarrow/pandas to_parquet)",
        )


def _read_arrow(path: Path, sink: _Sink, start: int = 0) -> Iterator[_Rec]:
    """Arrow IPC as `datasets` writes it (stream format); the file format is accepted too."""
    pa = _pyarrow(sink)
    if pa is None:
        return
    index = start
    try:
        with pa.memory_map(str(path)) as src:
            try:
                batches: Iterable[Any] = pa.ipc.open_stream(src)
            except pa.ArrowInvalid:
                src.seek(0)
                reader = pa.ipc.open_file(src)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
            for batch in batches:
                for row in batch.to_pylist():
                    index += 1
                    yield _Rec(index, None, row)
    except (pa.ArrowException, OSError) as err:
        sink.add(
            "error",
            "container",
            f"cannot read Arrow IPC data: {err}",
            "re-create it with datasets' save_to_disk",
        )


HEAD_BYTES = 8 << 20  # a JSON file's head: enough for SAMPLE_ROWS rows of ~40 kB


def _head_rows(path: Path) -> list[Any]:
    """The first SAMPLE_ROWS readable rows of a data file (of each file of a folder), without reading it all."""
    sink = _Sink(str(path))  # problems are `lfw data check`'s business; here only the layout counts
    if path.is_file():
        container = FILE_TYPES.get(path.suffix.lower())
        if container == "json" and path.stat().st_size > HEAD_BYTES:
            rows = _first_rows(_read_json(path, sink, {}, HEAD_BYTES))
            if rows:
                return rows
        return _first_rows(_read_file(path, container, sink)) if container else []
    if _is_save_to_disk(path):
        try:
            return _first_rows(_records_for_convert(path, None, sink))
        except UserError:  # several splits and none is `train`: `lfw run` refuses it with the reason
            return []
    if _is_lf_dataset_dir(path) is not None:
        return []
    return [
        row for f in sorted(path.iterdir()) if f.is_file() and f.suffix.lower() in FILE_TYPES for row in _head_rows(f)
    ]


def _first_rows(records: Iterable[_Rec]) -> list[Any]:
    rows = []
    for rec in records:
        if rec.ok:
            rows.append(rec.value)
        if rec.index >= SAMPLE_ROWS:
            break
    return rows


def _saved_split_files(folder: Path) -> list[Path]:
    """The .arrow shards of one `save_to_disk` split, in state.json order when it is there."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / f["filename"] for f in state.get("_data_files", [])]
        if files and all(f.is_file() for f in files):
            return files
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return sorted(folder.glob("*.arrow"))


def _saved_splits(path: Path) -> list[tuple[str | None, Path]]:
    """(split name, folder) for a DatasetDict folder, or [(None, path)] for a single saved split."""
    if not (path / "dataset_dict.json").is_file():
        return [(None, path)]
    try:
        names = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8")).get("splits") or []
    except (OSError, ValueError, AttributeError):
        names = []
    if not names:
        names = sorted(p.name for p in path.iterdir() if p.is_dir())
    return [(str(n), path / str(n)) for n in names]


def _is_save_to_disk(path: Path) -> bool:
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    return any(path.glob("*.arrow")) and (path / "dataset_info.json").is_file()


def _is_lf_dataset_dir(path: Path) -> dict[str, Any] | None:
    """A LLaMA-Factory dataset_dir: dataset_info.json maps names to entries (file_name, hf_hub_url)."""
    try:
        info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        if any(k in v for v in info.values() for k in ("file_name", "hf_hub_url", "ms_hub_url", "script_url")):
            return info
    return None


def _check_dir(path: Path, opts: _Options) -> DataReport:
    if _is_save_to_disk(path):
        return _check_save_to_disk(path, opts)
    info = _is_lf_dataset_dir(path)
    if info is not None:
        return _check_lf_dataset_dir(path, info, opts)
    return _check_folder(path, opts)


def _check_save_to_disk(path: Path, opts: _Options) -> DataReport:
    sink = _Sink(str(path))
    sink.add(
        "warning",
        "save-to-disk",
        "this is a `datasets` save_to_disk folder (dataset_dict.json / state.json + .arrow); LLaMA-Factory "
        "cannot load it: it reads a folder as plain data files and fails ('File types should be identical' / "
        "'Allowed file types') - seed 000 lost hours here",
        SAVE_TO_DISK_FIX.format(path=path),
    )
    parts = []
    for split, folder in _saved_splits(path):
        files = _saved_split_files(folder) if folder.is_dir() else []
        label = f"{path}[{split}]" if split else str(path)
        if not files:
            sink.add(
                "error",
                "container",
                f"split {split or '.'}: no .arrow files in {folder}",
                "re-create the folder with save_to_disk",
            )
            continue
        part_sink = _Sink(label)
        records = _chain_arrow(files, part_sink)
        media = opts.media_dir or path.parent
        parts.append(_check_records(folder, label, "arrow", records, opts, media, None, part_sink))
    return _combine(path, "save_to_disk", parts, sink)


def _chain_arrow(files: list[Path], sink: _Sink) -> Iterator[_Rec]:
    count = 0
    for f in files:
        for rec in _read_arrow(f, sink, start=count):
            count = rec.index
            yield rec


def _check_lf_dataset_dir(path: Path, info: dict[str, Any], opts: _Options) -> DataReport:
    """Check every local file registered in dataset_info.json with its registered columns and tags."""
    sink = _Sink(str(path / "dataset_info.json"))
    parts, skipped, absent = [], [], []
    hub = 0
    for name, entry in info.items():
        file_name = entry.get("file_name")
        if not file_name:
            hub += 1
            continue
        target = path / str(file_name)
        if not target.exists():
            absent.append(str(file_name))
            continue
        try:
            fmt = DataFormat.from_dataset_info(entry)
        except (AttributeError, TypeError):
            sink.add("error", "dataset-info", f"entry {name!r} is malformed", "columns and tags must be objects")
            continue
        media = opts.media_dir or path
        if target.is_dir():
            sub = _check_folder(target, opts, fmt, media)
        else:
            sub = _check_file(target, opts, fmt, media)
        sub.data_format = sub.data_format or fmt
        parts.append(sub)
    if absent:
        skipped.append(f"{len(absent)} registered file(s) not present: {', '.join(absent)}")
    if hub:
        skipped.append(f"{hub} hub dataset(s) (hf_hub_url / ms_hub_url): not local, not checked")
    report = _combine(path, "dataset_dir", parts, sink)
    report.skipped = skipped
    return report


def _check_folder(path: Path, opts: _Options, fixed: DataFormat | None = None, media: Path | None = None) -> DataReport:
    """A plain folder: LLaMA-Factory loads every entry in it, and all must share one file type."""
    sink = _Sink(str(path))
    entries = sorted(path.iterdir())
    types = {p.suffix.lower() for p in entries if p.is_file()}
    subdirs = [p.name for p in entries if p.is_dir()]
    if not entries:
        sink.add("error", "empty-dataset", "the folder is empty", "point to a data file or a folder of data files")
        return _report(path, "folder", None, 0, sink)
    if subdirs or len(types) > 1 or not types <= set(FILE_TYPES):
        found = ", ".join(sorted(types | {f"{d}/" for d in subdirs}))
        sink.add(
            "error",
            "container",
            f"LLaMA-Factory loads every file in a data folder and needs one supported type; found: {found}",
            "keep data files of one type only (.json/.jsonl/.csv/.parquet/.arrow); hidden files count too",
        )
    parts = [_check_file(p, opts, fixed, media) for p in entries if p.is_file() and p.suffix.lower() in FILE_TYPES]
    return _combine(path, "folder", parts, sink)


def _combine(path: Path, container: str, parts: list[DataReport], sink: _Sink) -> DataReport:
    for part in parts:
        sink.extend(part)
    names = {p.format for p in parts if p.format}
    fmt_name = names.pop() if len(names) == 1 else ("mixed" if names else None)
    data_format = next((p.data_format for p in parts if p.data_format), None) if fmt_name != "mixed" else None
    rows = sum(p.rows for p in parts)
    report = _report(path, container, fmt_name, rows, sink, data_format)
    report.parts = parts
    lengths = [n for p in parts for n in p.raw_lengths]
    cutoffs = [p.lengths.cutoff_len for p in parts if p.lengths]
    if lengths:
        report.lengths = _length_stats(lengths, cutoffs[0] if cutoffs else None)
    return report


def _report(
    path: Path, container: str, fmt: str | None, rows: int, sink: _Sink, data_format: DataFormat | None = None
) -> DataReport:
    order = {"error": 0, "warning": 1}
    problems = sorted(sink.problems, key=lambda p: order.get(p.severity, 2))  # stable: rows stay in order
    return DataReport(
        path=path,
        container=container,
        format=fmt,
        rows=rows,
        problems=problems,
        data_format=data_format,
        error_count=sink.error_count,
        warning_count=sink.warning_count,
        code_counts=dict(sink.codes),
    )


def _records_for_convert(src: Path, split: str | None, sink: _Sink) -> Iterator[_Rec]:
    if src.is_dir():
        if not _is_save_to_disk(src):
            raise UserError([Problem(str(src), "not a save_to_disk folder", "convert files one at a time")])
        splits = dict(_saved_splits(src))  # {None: folder} for a single saved split
        names = ", ".join(str(n) for n in splits)
        if None in splits:
            folder = splits[None]
        elif split is None and "train" not in splits and len(splits) != 1:
            raise UserError([Problem(str(src), f"several splits: {names}", "pass --split NAME")])
        else:
            name = split or ("train" if "train" in splits else next(iter(splits)))
            if name not in splits:
                raise UserError([Problem(str(src), f"no split {name!r}; splits: {names}", "pass --split NAME")])
            folder = splits[name]
        return _chain_arrow(_saved_split_files(folder), sink)
    container = FILE_TYPES.get(src.suffix.lower())
    if container is None:
        raise UserError([Problem(str(src), f"unsupported file type {src.suffix!r}")])
    return _read_file(src, container, sink)


_MAGIC = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"GIF8", ".gif"),
    (b"RIFF", ".webp"),
    (b"ID3", ".mp3"),
)


def _externalize_bytes(value: Any, media_dir: Path, base: Path) -> Any:
    """Replace embedded media structs ({bytes, path}) by files on disk, as LLaMA-Factory wants paths."""
    if isinstance(value, dict):
        if set(value) <= {"bytes", "path"} and isinstance(value.get("bytes"), bytes | bytearray):
            data = bytes(value["bytes"])
            ext = next(
                (e for m, e in _MAGIC if data.startswith(m)),
                Path(str(value.get("path") or "")).suffix or ".bin",
            )
            media_dir.mkdir(parents=True, exist_ok=True)
            target = media_dir / (hashlib.blake2b(data, digest_size=12).hexdigest() + ext)
            if not target.exists():
                target.write_bytes(data)
            return target.relative_to(base).as_posix()
        if set(value) <= {"bytes", "path"} and "path" in value:
            return value["path"]
        return {k: _externalize_bytes(v, media_dir, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_externalize_bytes(v, media_dir, base) for v in value]
    if isinstance(value, bytes | bytearray):
        raise UserError([Problem("convert", "a column holds raw bytes that are not media", "drop or decode it first")])
    return value


# ----------------------------------------------------------------------------------------------- rows


@dataclass
class _Sample:
    """A row normalised to what LLaMA-Factory trains on; `variants` are the responses (chosen, rejected)."""

    system: str
    tools: str
    prompt: list[tuple[str, str]]
    variants: list[list[tuple[str, str]]]
    label: bool | None = None  # a KTO row's desirability


def _aligned(path: Path, rec: _Rec, sample: _Sample, fmt: DataFormat, media_dir: Path) -> Sample:
    """A checked row in LLaMA-Factory's aligned columns (the mapping is documented on `Sample`)."""
    row = rec.value

    def messages(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in pairs]

    response = [m for variant in sample.variants for m in messages(variant)]
    if sample.label is not None:
        empty = {"role": "assistant", "content": ""}
        response = response + [empty] if sample.label else [empty, *response]
    system, tools = sample.system, sample.tools
    if fmt.formatting == "openai":  # OpenAIDatasetConverter's own edit of the system prompt
        if not system:
            system = "" if tools else "detailed thinking off"
        elif tools:
            system += "\n"
        elif "detailed thinking on" not in system and "detailed thinking off" not in system:
            system += "\ndetailed thinking off"
    media = {
        kind: _find_medias(row.get(fmt.columns[kind]) if fmt.columns.get(kind) else None, media_dir) for kind in MEDIA
    }
    return Sample(path, rec.index, messages(sample.prompt), response, system, tools, **media)


def _find_medias(value: Any, media_dir: Path) -> list[Any] | None:
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


def _check_records(
    path: Path,
    name: str,
    container: str,
    records: Iterable[_Rec],
    opts: _Options,
    media_dir: Path,
    fixed: DataFormat | None = None,
    sink: _Sink | None = None,
) -> DataReport:
    """Detect the format on the first rows, then check every row, deduplicate and measure lengths."""
    sink = sink or _Sink(name)
    it = iter(records)
    head: list[_Rec] = []
    for rec in it:
        head.append(rec)
        if len(head) >= SAMPLE_ROWS:
            break
    fmt = _resolve_format([r.value for r in head if r.ok], opts, fixed, sink)
    checker = _RowChecker(name, fmt, media_dir, sink)
    lengths = _Lengths(opts, sink) if opts.tokenizer is not None else None
    rows = 0
    for rec in _chain(head, it):
        rows = max(rows, rec.index)
        if rec.ok:
            sample = checker.check(rec)
            if sample is not None and lengths is not None:
                lengths.add(rec, sample)
            if sample is not None and opts.samples is not None:
                opts.samples.append(_aligned(path, rec, sample, fmt, media_dir))  # type: ignore[arg-type]
    if fmt is not None:
        _check_columns(checker.first_seen, fmt, fixed is not None, sink)
    if rows == 0 and not sink.error_count:
        sink.add("error", "empty-dataset", "no rows", "the file has no data rows")
    if lengths is not None:
        lengths.flush()
    report = _report(path, container, fmt.name if fmt else None, rows, sink, fmt)
    if lengths is not None and lengths.values:
        report.lengths = _length_stats(lengths.values, opts.cutoff_len)
        report.raw_lengths = lengths.values
    return report


def _chain(head: list[_Rec], rest: Iterator[_Rec]) -> Iterator[_Rec]:
    yield from head
    yield from rest


def _check_columns(first_seen: dict[str, int], fmt: DataFormat, registered: bool, sink: _Sink) -> None:
    """Columns as LLaMA-Factory uses them: a named column no row has is a KeyError; one it is not told of is
    silently ignored. `registered`: the layout comes from the user's dataset_info.json, not from lfw."""
    unread = ("query", "history") if fmt.style == "messages" else ()
    for attr in OPTIONAL_COLUMNS:
        key = fmt.columns.get(attr)
        if key and key not in first_seen and attr not in unread:
            sink.add(
                "error",
                "column-absent",
                f"the {attr} column is {key!r}, but no row has {key!r}: LLaMA-Factory raises KeyError: {key!r}",
                'give the entry a "columns" block naming only keys the rows have (without one, LLaMA-Factory '
                "reads query from 'input')"
                if registered
                else f"remove {attr} from the dataset's columns, or name the key the rows use",
            )
    wanted = _present_columns(first_seen, fmt.style)
    if registered:
        aliases = {"label": "kto_tag", "chosen": "chosen", "rejected": "rejected", "kto_tag": "kto_tag"}
        wanted |= {attr: key for key, attr in aliases.items() if key in first_seen}
    mapped = {v for v in fmt.columns.values() if v}
    for attr, key in sorted(wanted.items(), key=lambda item: first_seen[item[1]]):
        if fmt.columns.get(attr) or key in mapped:
            continue
        if registered:
            sink.add(
                "warning",
                "unregistered-column",
                f"column {key!r} is in the data but not in dataset_info.json: LLaMA-Factory ignores it",
                f'add "{attr}": "{key}" under "columns" (lfw registers detected columns for you)',
            )
        else:
            sink.add(
                "error",
                "unregistered-column",
                f"column {key!r} first appears in row {first_seen[key]}, after the first {SAMPLE_ROWS} rows that "
                "lfw registers columns from: LLaMA-Factory would ignore it",
                f"name it in the recipe's dataset: columns: {{{attr}: {key}}}",
                row=first_seen[key],
            )


def _render_longest(sample: _Sample) -> str:
    variants = sample.variants or [[]]
    texts = [render_chatml(sample.system, sample.tools, sample.prompt + v) for v in variants]
    return max(texts, key=len)


class _Lengths:
    """Token lengths in batches (the Rust tokenizer is fast in bulk); rows over cutoff_len become warnings."""

    def __init__(self, opts: _Options, sink: _Sink) -> None:
        self.opts, self.sink = opts, sink
        self.values: list[int] = []
        self.pending: list[tuple[_Rec, str]] = []

    def add(self, rec: _Rec, sample: _Sample) -> None:
        self.pending.append((rec, _render_longest(sample)))
        if len(self.pending) >= 512:
            self.flush()

    def flush(self) -> None:
        clean = [t.encode("utf-8", "replace").decode("utf-8") for _, t in self.pending]  # lone surrogates
        encoded = self.opts.tokenizer.encode_batch(clean, add_special_tokens=False) if clean else []
        cutoff = self.opts.cutoff_len
        for (rec, _), enc in zip(self.pending, encoded, strict=True):
            n = len(enc.ids)
            self.values.append(n)
            if cutoff is not None and n > cutoff:
                self.sink.add(
                    "warning",
                    "truncated",
                    f"{n} tokens > cutoff_len {cutoff}: LLaMA-Factory truncates "
                    "this row (part of the prompt or answer is lost)",
                    "raise cutoff_len, shorten or split the row, or drop it",
                    rec.index,
                    rec.line,
                )
        self.pending = []


def _length_stats(lengths: list[int], cutoff_len: int | None) -> LengthStats:
    s = sorted(lengths)

    def pct(q: float) -> int:  # nearest rank
        return s[max(0, math.ceil(q / 100 * len(s)) - 1)]

    p95 = pct(95)
    step = 64 if p95 <= 1024 else 128
    over = sum(1 for n in s if cutoff_len is not None and n > cutoff_len)
    return LengthStats(
        count=len(s),
        p50=pct(50),
        p90=pct(90),
        p95=p95,
        p99=pct(99),
        max=s[-1],
        mean=sum(s) / len(s),
        suggested_cutoff_len=max(step, math.ceil(p95 / step) * step),
        cutoff_len=cutoff_len,
        over_cutoff=over,
    )


def load_tokenizer(model: str | os.PathLike[str]) -> Any:
    """A fast tokenizer from tokenizer.json (a folder, the file, or a hub id already in the HF cache).

    Only the `tokenizers` library is used: transformers would add seconds of import time for a count.
    """
    p = Path(model).expanduser()
    candidates = [p] if p.is_file() else [p / "tokenizer.json"]
    if not p.exists() and "/" in str(model):
        hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
        snaps = hub.expanduser() / f"models--{str(model).replace('/', '--')}" / "snapshots"
        candidates += sorted(snaps.glob("*/tokenizer.json"))
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise UserError(
            [
                Problem(
                    str(model),
                    "no tokenizer.json found",
                    "pass a local model folder that contains tokenizer.json (a fast tokenizer); "
                    "AutoTokenizer.from_pretrained(...).save_pretrained(DIR) writes one",
                )
            ]
        )
    try:
        from tokenizers import Tokenizer  # lazy: only length statistics need it
    except ImportError as err:
        raise UserError(
            [Problem("--model", "token lengths need the tokenizers library", "pip install tokenizers")]
        ) from err
    try:
        tok = Tokenizer.from_file(str(found))
    except Exception as err:  # noqa: BLE001  # the Rust side raises plain Exception
        raise UserError([Problem(str(found), f"cannot load tokenizer: {err}")]) from err
    tok.no_truncation()  # tokenizer.json may carry a max_length that would hide long rows
    tok.no_padding()
    return tok


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _json_default(obj: Any) -> str:
    if isinstance(obj, bytes | bytearray):
        return hashlib.blake2b(bytes(obj), digest_size=16).hexdigest()
    return repr(obj)


_ROLE_NAMES = {"user": "user", "assistant": "assistant", "observation": "observation", "function": "function"}


class _RowChecker:
    """Validates rows of one format the way LLaMA-Factory's converters read them, collecting every problem."""

    def __init__(self, name: str, fmt: DataFormat | None, media_dir: Path, sink: _Sink) -> None:
        self.name, self.fmt, self.media_dir, self.sink = name, fmt, media_dir, sink
        self.seen: dict[bytes, int] = {}
        self.media_cache: dict[str, tuple[str, str | None]] = {}
        self.first_seen: dict[str, int] = {}  # every key of the data -> first row that has it
        self.rec = _Rec(0, None, None)

    # -- problem helpers (the current row's location is implied)
    def err(self, code: str, message: str, fix: str = "") -> None:
        self.sink.add("error", code, message, fix, self.rec.index, self.rec.line)

    def warn(self, code: str, message: str, fix: str = "") -> None:
        self.sink.add("warning", code, message, fix, self.rec.index, self.rec.line)

    def req_str(self, row: dict, key: str | None, what: str, allow_empty: bool = False) -> str | None:
        """A required string field: missing, null, non-string and empty are each reported as such."""
        if key is None:
            return None
        if key not in row:
            self.err("missing-field", f"missing field {key!r} ({what})", f"add {key!r} to every row")
        elif row[key] is None:
            self.err("null-field", f"{key!r} is null ({what})", f"fill {key!r} or drop the row")
        elif not isinstance(row[key], str):
            self.err(
                "wrong-type",
                f"{key!r} is a {_type_name(row[key])}, expected a string ({what})",
                f"store {key!r} as text",
            )
        elif not allow_empty and not row[key].strip():
            self.err("empty-field", f"{key!r} is empty ({what})", f"fill {key!r} or drop the row")
        else:
            return row[key]
        return None

    def opt_str(self, row: dict, key: str | None) -> str:
        """An optional string field: absent or null is fine, another type is not."""
        if key is None or row.get(key) is None:
            return ""
        if not isinstance(row[key], str):
            self.err(
                "wrong-type",
                f"{key!r} is a {_type_name(row[key])}, expected a string",
                f"store {key!r} as text",
            )
            return ""
        return row[key]

    # -- the row
    def check(self, rec: _Rec) -> _Sample | None:
        self.rec = rec
        row = rec.value
        if not isinstance(row, dict):
            self.err(
                "not-object",
                f"the row is a {_type_name(row)}, expected a JSON object",
                'each row must be an object like {"instruction": ..., "output": ...}',
            )
            return None
        for key in row.keys() - self.first_seen.keys():
            self.first_seen[str(key)] = rec.index
        self._duplicate(row)
        if self.fmt is None:
            return None
        before = self.sink.error_count
        if self.fmt.style == "messages":
            sample = self._messages(row)
        elif self.fmt.style == "text":
            text = self.req_str(row, self.fmt.columns.get("prompt"), "pretraining text")
            sample = _Sample("", "", [("user", text)], []) if text is not None else None
        else:
            sample = self._alpaca(row)
        if sample is None:
            return None
        sample.tools = self._tools(row)
        self._media(row, sample)
        return sample if self.sink.error_count == before else None  # only clean rows are measured

    def _duplicate(self, row: dict) -> None:
        try:
            text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError):  # keys of mixed types cannot be sorted; such rows are odd anyway
            return
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        first = self.seen.setdefault(key, self.rec.index)
        if first != self.rec.index:
            self.warn("duplicate", f"exact duplicate of row {first}", "drop duplicates: they overweight one example")

    def _alpaca(self, row: dict) -> _Sample | None:
        """As in AlpacaDatasetConverter: history, instruction + input, then output or chosen/rejected."""
        c = self.fmt.columns  # type: ignore[union-attr]
        prompt: list[tuple[str, str]] = []
        hist_key = c.get("history")
        history = row.get(hist_key) if hist_key else None
        if history is not None:
            if not isinstance(history, list):
                self.err(
                    "wrong-type",
                    f"{hist_key!r} is a {_type_name(history)}, expected a list of [query, answer]",
                    'write history as [["q1", "a1"], ["q2", "a2"]]',
                )
            else:
                for j, pair in enumerate(history):
                    ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                    if not ok:
                        self.err(
                            "wrong-type",
                            f"{hist_key}[{j}] must be a pair of strings [query, answer]",
                            "LLaMA-Factory unpacks each history item into exactly two strings",
                        )
                        break
                    prompt += [("user", pair[0]), ("assistant", pair[1])]
        parts, bad_type = [], False
        for key in (c.get("prompt"), c.get("query")):
            value = row.get(key) if key else None
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                self.err(
                    "wrong-type",
                    f"{key!r} is a {_type_name(value)}, expected a string",
                    f"store {key!r} as text",
                )
                bad_type = True
                continue
            parts.append(value)
        user = "\n".join(parts)  # LLaMA-Factory joins instruction and input with a newline
        pk, qk = c.get("prompt"), c.get("query")
        if not user.strip() and not bad_type:
            if pk and pk not in row and not (qk and row.get(qk)):
                self.err("missing-field", f"missing field {pk!r} (the prompt)", f"add {pk!r} to every row")
            elif pk and pk in row and row[pk] is None and not (qk and row.get(qk)):
                self.err("null-field", f"{pk!r} is null (the prompt)", f"fill {pk!r} or drop the row")
            else:
                both = f"{pk!r} and {qk!r} are" if qk else f"{pk!r} is"
                self.err("empty-field", f"empty prompt: {both} empty", "fill the instruction or drop the row")
        prompt.append(("user", user))
        system = self.opt_str(row, c.get("system"))
        if self.fmt.kto:  # type: ignore[union-attr]
            label = self._kto_tag(row)
            answer = self.req_str(row, c.get("response"), "the answer")
            return _Sample(system, "", prompt, [[("assistant", answer or "")]], label)
        if self.fmt.ranking:  # type: ignore[union-attr]
            chosen = self._pair_str(row, c.get("chosen"), "chosen")
            rejected = self._pair_str(row, c.get("rejected"), "rejected")
            if chosen is not None and rejected is not None:
                self._same_pair(chosen, rejected)
            return _Sample(system, "", prompt, [[("assistant", chosen or "")], [("assistant", rejected or "")]])
        answer = self.req_str(row, c.get("response"), "the answer")
        if answer is None and isinstance(row.get(c.get("response") or ""), list):
            self.err(
                "wrong-type",
                "the answer is a list; LLaMA-Factory treats the row as unsupervised and drops it",
                "store one answer string per row",
            )
        return _Sample(system, "", prompt, [[("assistant", answer or "")]])

    def _pair_str(self, row: dict, key: str | None, what: str) -> str | None:
        value = row.get(key) if key else None
        if isinstance(value, dict | list) and key in row:
            self.err(
                "wrong-type",
                f"{key!r} is a {_type_name(value)}; alpaca-style preference rows need a string",
                "store the answer text, or use format preference_sharegpt (prompt in conversations)",
            )
            return None
        return self.req_str(row, key, f"the {what} answer")

    def _same_pair(self, chosen: str, rejected: str) -> None:
        if chosen.strip() == rejected.strip():
            self.err(
                "chosen-equals-rejected",
                "chosen and rejected are identical: the pair teaches nothing",
                "fix the pair or drop the row",
            )

    def _kto_tag(self, row: dict) -> bool | None:
        key = self.fmt.columns.get("kto_tag")  # type: ignore[union-attr]
        value = row.get(key) if key else None
        if isinstance(value, bool):
            return value
        got = "it is missing" if key not in row else f"got a {_type_name(value)} ({value!r})"[:80]
        self.err(
            "kto-tag",
            f"kto tag {key!r} must be true or false; {got}",
            "LLaMA-Factory drops KTO rows without a JSON boolean label",
        )
        return None

    def _tools(self, row: dict) -> str:
        key = self.fmt.columns.get("tools")  # type: ignore[union-attr]
        value = row.get(key) if key else None
        if value is None or value == "":
            return ""
        if isinstance(value, list | dict) and self.fmt.formatting == "openai":  # type: ignore[union-attr]
            return json.dumps(value, ensure_ascii=False)
        if not isinstance(value, str):
            self.err(
                "wrong-type",
                f"{key!r} is a {_type_name(value)}, expected a JSON string of tool schemas",
                f"store {key!r} as json.dumps(list_of_tools)",
            )
            return ""
        try:
            json.loads(value)
        except ValueError:
            self.err("tools-json", f"{key!r} is not valid JSON", "LLaMA-Factory parses it with json.loads; fix it")
        return value

    def _messages(self, row: dict) -> _Sample | None:
        """As in Sharegpt/OpenAIDatasetConverter: optional first system, strict alternation, count."""
        fmt = self.fmt
        assert fmt is not None
        c, t = fmt.columns, fmt.tags
        key = c.get("messages") or "conversations"
        msgs = row.get(key)
        if key not in row:
            other = next((k for k in ("conversations", "messages", "instruction") if k in row and k != key), None)
            hint = f" (the row has {other!r}: mixed formats in one file?)" if other else ""
            self.err("missing-field", f"missing field {key!r}{hint}", f"every row needs a {key!r} list of messages")
            return None
        if not isinstance(msgs, list):
            code = "null-field" if msgs is None else "wrong-type"
            self.err(
                code,
                f"{key!r} is a {_type_name(msgs)}, expected a list of messages",
                "CSV cannot hold message lists: use JSON or JSONL" if isinstance(msgs, str) else "",
            )
            return None
        if not msgs:
            self.err("empty-field", f"{key!r} is an empty list", "drop the row or add the conversation")
            return None
        parsed = self._parse_messages(key, msgs)
        if parsed is None:
            return None
        roles = {
            t.get(n): r
            for n, r in (
                ("user_tag", "user"),
                ("assistant_tag", "assistant"),
                ("observation_tag", "observation"),
                ("function_tag", "function"),
                ("system_tag", "system"),
            )
            if t.get(n)
        }
        for j, role, _ in parsed:
            if role not in roles:
                known = ", ".join(repr(r) for r in roles)
                self.err(
                    "unknown-role",
                    f"{key}[{j}].{t.get('role_tag')} is {role!r}; this file uses {known}",
                    "use one role vocabulary in the whole file (human/gpt or user/assistant)",
                )
                return None
        system = ""
        sys_tag = t.get("system_tag")
        if sys_tag and parsed[0][1] == sys_tag:
            system = parsed[0][2]
            parsed = parsed[1:]
        else:
            system = self.opt_str(row, c.get("system"))
        original = {j: r for j, r, _ in parsed}
        turns: list[tuple[int, str, str]] = [(j, roles[r], content) for j, r, content in parsed]
        if fmt.formatting == "openai":
            turns = _merge_tool_messages(turns)
        user, assistant = t.get("user_tag"), t.get("assistant_tag")
        for k, (j, role, _) in enumerate(turns):
            want = ("user", "observation") if k % 2 == 0 else ("assistant", "function")
            if role == "system":
                self.err(
                    "role-order",
                    f"{key}[{j}] is a system message; only the first message may be system",
                    "merge it into the first system message or drop it",
                )
                return None
            if role not in want:
                expect = f"{user!r} (or observation)" if k % 2 == 0 else f"{assistant!r} (or function call)"
                self.err(
                    "role-order",
                    f"{key}[{j}] is {original.get(j, role)!r} but {expect} was expected: turns must "
                    f"alternate {user} -> {assistant} after an optional first system message",
                    "merge consecutive messages of a speaker or fix the roles (LLaMA-Factory drops the row)",
                )
                return None
        pairs = [(role, content) for _, role, content in turns]
        if fmt.ranking:
            if len(turns) % 2 == 0:
                self.err(
                    "message-count",
                    f"for preference data {key!r} must end with a {user!r} turn (it has {len(turns)} turns)",
                    "keep the shared prompt in the conversation and put only the final answers in chosen/rejected",
                )
                return None
            chosen = self._pair_message(row, c.get("chosen"), "chosen")
            rejected = self._pair_message(row, c.get("rejected"), "rejected")
            if chosen is None or rejected is None:
                return None
            self._same_pair(chosen[1], rejected[1])
            return _Sample(system, "", pairs, [[chosen], [rejected]])
        if not turns:
            self.err(
                "message-count",
                "only a system message: no turns to train on",
                "add a user and an assistant turn",
            )
            return None
        if len(turns) % 2 == 1:
            self.err(
                "message-count",
                f"the conversation ends with a {user!r} turn; the last turn must be "
                f"{assistant!r} (LLaMA-Factory drops this row)",
                "add the answer or drop the last message",
            )
            return None
        label = self._kto_tag(row) if fmt.kto else None
        return _Sample(system, "", pairs[:-1], [pairs[-1:]], label)

    def _parse_messages(self, key: str, msgs: list) -> list[tuple[int, str, str]] | None:
        fmt = self.fmt
        assert fmt is not None
        role_tag, content_tag = fmt.tags.get("role_tag") or "from", fmt.tags.get("content_tag") or "value"
        other = ("role", "content") if role_tag == "from" else ("from", "value")
        out: list[tuple[int, str, str]] = []
        for j, m in enumerate(msgs):
            where = f"{key}[{j}]"
            if not isinstance(m, dict):
                self.err(
                    "wrong-type",
                    f"{where} is a {_type_name(m)}, expected an object with {role_tag!r} and {content_tag!r}",
                    "",
                )
                return None
            if role_tag not in m:
                hint = f" (it uses {other[0]!r}/{other[1]!r}; this file uses {role_tag!r}/{content_tag!r})"
                self.err(
                    "missing-field",
                    f"{where} has no {role_tag!r}" + (hint if other[0] in m else ""),
                    "use one tag style in the whole file",
                )
                return None
            role = m[role_tag]
            if not isinstance(role, str):
                self.err("wrong-type", f"{where}.{role_tag} is a {_type_name(role)}, expected a string", "")
                return None
            content = m.get(content_tag)
            calls = m.get("tool_calls") if fmt.formatting == "openai" else None
            if calls:
                if not (
                    isinstance(calls, list)
                    and all(isinstance(x, dict) and isinstance(x.get("function"), dict) for x in calls)
                ):
                    self.err("wrong-type", f'{where}.tool_calls must be a list of {{"function": {{...}}}}', "")
                    return None
                role = fmt.tags.get("function_tag") or "function_call"
                content = json.dumps([x["function"] for x in calls], ensure_ascii=False)
            elif content_tag not in m:
                self.err("missing-field", f"{where} has no {content_tag!r}", f"every message needs {content_tag!r}")
                return None
            elif content is None:
                self.err("null-field", f"{where}.{content_tag} is null", "fill the message or drop it")
                return None
            elif not isinstance(content, str):
                self.err(
                    "wrong-type",
                    f"{where}.{content_tag} is a {_type_name(content)}, expected a string",
                    "multimodal content goes in the text as <image> tags plus an images list",
                )
                return None
            elif not content.strip() and role in (fmt.tags.get("user_tag"), fmt.tags.get("assistant_tag")):
                self.err(
                    "empty-field",
                    f"{where}.{content_tag} is empty ({role})",
                    "fill the message or drop the row",
                )
                return None
            out.append((j, role, content))
        return out

    def _pair_message(self, row: dict, key: str | None, what: str) -> tuple[str, str] | None:
        """A sharegpt-style answer message as (role, content), the role as LLaMA-Factory maps it."""
        t = self.fmt.tags  # type: ignore[union-attr]
        role_tag, content_tag = t.get("role_tag") or "from", t.get("content_tag") or "value"
        if not key or key not in row or row[key] is None:
            code = "missing-field" if not key or key not in row else "null-field"
            self.err(
                code,
                f"{what} is {'missing' if code == 'missing-field' else 'null'}",
                f"every preference row needs {what!r}",
            )
            return None
        value = row[key]
        if isinstance(value, list):
            self.err(
                "wrong-type",
                f"{what!r} is a list of messages (TRL style); LLaMA-Factory wants one message object",
                "put the shared prompt in the conversation and only the final answer in "
                f"{what}: {{{role_tag!r}: {t.get('assistant_tag')!r}, {content_tag!r}: ...}}",
            )
            return None
        if not isinstance(value, dict):
            self.err(
                "wrong-type",
                f"{what!r} is a {_type_name(value)}; sharegpt-style preference rows need a message "
                f"object {{{role_tag!r}: {t.get('assistant_tag')!r}, {content_tag!r}: ...}}",
                "wrap the answer in a message object, or use format preference (alpaca-style strings)",
            )
            return None
        role, content = value.get(role_tag), value.get(content_tag)
        if role not in (t.get("assistant_tag"), t.get("function_tag")) or not isinstance(role, str):
            self.err(
                "answer-role",
                f"{what}.{role_tag} is {role!r}, expected {t.get('assistant_tag')!r}",
                "chosen and rejected are assistant answers",
            )
            return None
        if not isinstance(content, str) or not content.strip():
            state = "empty" if isinstance(content, str) else f"a {_type_name(content)}"
            self.err(
                "empty-field" if state == "empty" else "wrong-type",
                f"{what}.{content_tag} is {state}",
                "give both answers as non-empty text",
            )
            return None
        return ("assistant" if role == t.get("assistant_tag") else "function"), content

    def _media(self, row: dict, sample: _Sample) -> None:
        """`<image>` count == len(images) per answer variant (else LLaMA-Factory raises); files exist."""
        fmt = self.fmt
        assert fmt is not None
        prompt_text = [content for _, content in sample.prompt]
        variants = [[content for _, content in v] for v in sample.variants] or [[]]
        for kind, tag in MEDIA.items():
            counts = {sum(s.count(tag) for s in prompt_text + v) for v in variants}
            key = fmt.columns.get(kind)
            if not key:
                if any(counts):
                    self.warn(
                        "media-tag-without-media",
                        f"the text has {max(counts)} {tag} tag(s) but the data has no {kind} column",
                        f"add a {kind!r} list, or remove the tags (a vision model would fail on this row)",
                    )
                continue
            items = self._media_items(row, key, kind)
            if items is None:
                continue
            for n in sorted(counts):
                if n != len(items):
                    self.err(
                        "media-count",
                        f"{n} {tag} tag(s) in the text but {len(items)} item(s) in {key!r}",
                        f"put exactly one {tag} in the text per entry of {key!r} (LLaMA-Factory raises "
                        "'The number of ... does not match')",
                    )
                    break
            for j, item in enumerate(items):
                self._media_file(kind, key, j, item)

    def _media_items(self, row: dict, key: str, kind: str) -> list | None:
        value = row.get(key)
        if value is None:
            return []
        if isinstance(value, str | dict):
            return [value]
        if not isinstance(value, list):
            self.err(
                "wrong-type",
                f"{key!r} is a {_type_name(value)}, expected a list of file paths",
                f'write "{key}": ["path/to/file", ...]',
            )
            return None
        return value

    def _media_file(self, kind: str, key: str, j: int, item: Any) -> None:
        if isinstance(item, dict):
            if isinstance(item.get("bytes"), bytes | bytearray) and item["bytes"]:
                return
            item = item.get("path")
        paths = item if isinstance(item, list) else [item]  # a video may be a list of frame files
        for p in paths:
            if not isinstance(p, str) or not p:
                self.err("wrong-type", f"{key}[{j}] is a {_type_name(p)}, expected a file path", "")
                return
            state, damage = self._locate(p, "images" if isinstance(item, list) else kind)
            if state == "missing":
                self.err(
                    "media-missing",
                    f"{key}[{j}] {p!r} does not exist (looked in {self.media_dir.resolve()})",
                    "fix the path; relative paths are resolved against the data file's folder (media_dir)",
                )
            elif damage:
                self.err(
                    "media-corrupt",
                    f"{key}[{j}] {p!r} {damage}: LLaMA-Factory fails on it when it loads the media",
                    "replace the file with a valid one or drop the row",
                )
            elif state == "cwd":
                self.warn(
                    "media-cwd",
                    f"{key}[{j}] {p!r} exists only relative to the current directory",
                    f"make it relative to {self.media_dir} (LLaMA-Factory's media_dir) or absolute",
                )

    def _locate(self, p: str, kind: str) -> tuple[str, str | None]:
        """Where a media path is (ok, cwd, missing, remote) and what is wrong with its content, cached per path."""
        if p.startswith(("http://", "https://", "s3://", "gs://", "data:")) or len(p) > 1024:
            return "remote", None  # URLs and inline base64 are loaded as they are
        found = self.media_cache.get(p)
        if found is None:
            try:
                local = self.media_dir / p
                if local.exists():
                    found = ("ok", _media_damage(local, kind))
                elif Path(p).exists():
                    found = ("ok" if Path(p).is_absolute() else "cwd", _media_damage(Path(p), kind))
                else:
                    found = ("missing", None)
            except (OSError, ValueError):  # names with NUL bytes or too long for the filesystem
                found = ("missing", None)
            self.media_cache[p] = found
        return found


# Leading bytes of the image types LLaMA-Factory's PIL decodes; others are identified by PIL itself.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


def _media_damage(path: Path, kind: str) -> str | None:
    """Why a media file cannot be decoded, from its first bytes: cheap, and exact for the usual corruption
    (an empty file, an HTML error page or text saved as .jpg). PIL is imported only for unusual image types."""
    if path.is_dir():
        return None  # LLaMA-Factory leaves a folder path as it is: the video reader's business
    try:
        with path.open("rb") as fh:
            head = fh.read(512)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if not head:
        return "is an empty file"
    if kind == "images":
        if head.startswith(_IMAGE_SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
            return None
        try:
            from PIL import Image, UnidentifiedImageError  # lazy: only images without a common signature
        except ImportError:
            return None
        try:
            with Image.open(path):
                return None
        except (UnidentifiedImageError, OSError, ValueError):
            return "is not an image (PIL cannot identify it)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return None  # binary: the audio/video container formats are too many to tell apart here
        text = head[: err.start].decode("utf-8")  # the 512 bytes ended inside a character
    if all(ch.isprintable() or ch.isspace() for ch in text):
        return f"holds text, not {kind[:-1]} data"
    return None


def _merge_tool_messages(turns: list[tuple[int, str, str]]) -> list[tuple[int, str, str]]:
    """OpenAI layout: consecutive tool results form one observation turn, joined as LLaMA-Factory joins them."""
    out: list[tuple[int, str, str]] = []
    for j, role, content in turns:
        if role == "observation" and out and out[-1][1] == "observation":
            out[-1] = (out[-1][0], role, out[-1][2] + "\n</tool_response>\n<tool_response>\n" + content)
        else:
            out.append((j, role, content))
    return out
