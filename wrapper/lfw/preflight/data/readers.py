"""Reading data files row by row: JSON, JSON lines, CSV, text, Parquet, Arrow and `save_to_disk` folders.

Every row comes with its 1-based index and, where the container has lines, its line, so a problem names the exact
spot; a syntax error is a problem in the sink, not an exception. The containers are the ones LLaMA-Factory loads
(extras/constants.py FILEEXT2TYPE). `lfw eval`'s benchmarks read through `read_rows`, which stops at the first error.
pyarrow is imported only when a Parquet or Arrow file is read.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.preflight.data.report import Sink

# Extensions LLaMA-Factory loads, mapped to our container names.
FILE_TYPES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}
FILE_TYPES[".txt"] = "text"

SAMPLE_ROWS = 200  # rows read before deciding the format of a file
HEAD_BYTES = 8 << 20  # a JSON file's head: enough for SAMPLE_ROWS rows of ~40 kB

_WS = re.compile(r"[ \t\n\r]*")


@dataclass
class Record:
    """One row as read: 1-based index, line (JSON/JSONL/CSV) and value; ok=False after a parse error."""

    index: int
    line: int | None
    value: Any
    ok: bool = True


def read_file(path: Path, container: str, sink: Sink, meta: dict[str, str] | None = None) -> Iterator[Record]:
    """The rows of one file of a known container; `meta["container"]` says when a .json file holds JSON lines."""
    if container == "json":
        return read_json(path, sink, meta if meta is not None else {})
    readers = {"jsonl": read_jsonl, "csv": read_csv, "text": read_text, "parquet": read_parquet}
    return readers.get(container, read_arrow)(path, sink)


def read_rows(path: Path, container: str) -> list[Any]:
    """Every row of a file, or one `UserError` naming the first unreadable spot (for eval's benchmark files)."""
    sink = Sink(str(path))
    rows = []
    for rec in read_file(path, container, sink):
        if not rec.ok:
            break
        rows.append(rec.value)
    sink.raise_first(limit=1)
    return rows


# ----------------------------------------------------------------------------------------------- JSON


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)  # never None: the pattern matches the empty string
    return match.end() if match else pos


def _line_at(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def json_hint(err: json.JSONDecodeError) -> str:
    """Turn json's terse messages into the usual cause."""
    msg = err.msg
    nxt = err.doc[err.pos : err.pos + 1] if err.doc else ""
    if err.doc is not None and err.pos >= len(err.doc.rstrip()):
        return "the JSON ends too early (a closing brace, bracket or quote is missing)"
    if msg.startswith("Expecting value") and nxt in ("]", "}"):
        return "trailing comma before the closing bracket"
    hints = {
        "Expecting property name": "keys need double quotes; no trailing comma after the last key",
        "Expecting ',' delimiter": "a comma is missing between two items, or a string contains an unescaped quote",
        "Invalid control character": "a raw newline or tab inside a string; escape it as \\n / \\t",
        "Unterminated string": "a string is not closed (missing quote)",
    }
    return next((hint for start, hint in hints.items() if msg.startswith(start)), "fix the JSON syntax at that spot")


def _json_text(path: Path, sink: Sink, prefix: int | None) -> str | None:
    try:
        if prefix is None:
            return path.read_bytes().decode("utf-8-sig")
        with path.open("rb") as fh:
            return fh.read(prefix).decode("utf-8-sig", errors="ignore")  # may end mid-character
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        sink.add("error", "encoding", f"not UTF-8 (byte {err.start})", "save the file as UTF-8", line=line)
        return None


def read_json(path: Path, sink: Sink, meta: dict[str, str], prefix: int | None = None) -> Iterator[Record]:
    """A JSON array, read element by element so every row knows its line; JSON lines in .json also work.

    With `prefix`, only the rows within that many leading bytes (the head, for registering columns).
    """
    text = _json_text(path, sink, prefix)
    if text is None:
        return
    pos = _skip_ws(text, 0)
    if pos == len(text):
        sink.add("error", "empty-dataset", "the file is empty", "write a JSON list of rows, or use JSONL")
    elif text[pos] == "{":
        yield from _json_objects(text, pos, sink, meta)
    elif text[pos] != "[":
        sink.add(
            "error",
            "parse",
            "expected a JSON list of rows ('[')",
            "write [ {row}, {row}, ... ] or JSONL",
            line=_line_at(text, pos),
        )
    else:
        yield from _json_array(text, _skip_ws(text, pos + 1), sink)


def _json_array(text: str, start: int, sink: Sink) -> Iterator[Record]:
    """The rows of a JSON list whose '[' ends before `start`, until its ']' or the first syntax error."""
    if text[start : start + 1] == "]":
        return
    dec = json.JSONDecoder()
    line, last, index = 1, 0, 0
    pos: int | None = start
    while pos is not None:
        line += text.count("\n", last, pos)
        last = pos
        try:
            value, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            sink.add(
                "error",
                "parse",
                f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}",
                json_hint(err) + "; nothing after this point can be read",
                row=index + 1,
                line=err.lineno,
            )
            return
        index += 1
        yield Record(index, line, value)
        pos = _next_row(text, _skip_ws(text, end), index, sink)


def _next_row(text: str, pos: int, index: int, sink: Sink) -> int | None:
    """Where the row after row `index` starts, or None at the closing ']' or a syntax error (then reported)."""
    ch = text[pos : pos + 1]
    if ch == ",":
        pos = _skip_ws(text, pos + 1)
        if text[pos : pos + 1] != "]":
            return pos
        bad = _line_at(text, pos)
        sink.add(
            "error",
            "parse",
            f"trailing comma before ']' at line {bad}",
            "remove the comma after the last row (strict JSON forbids it)",
            line=bad,
        )
    elif ch == "]":
        rest = _skip_ws(text, pos + 1)
        if rest != len(text):
            bad = _line_at(text, rest)
            sink.add(
                "error",
                "parse",
                f"extra content after the closing ']' at line {bad}",
                "keep one JSON list per file",
                line=bad,
            )
    else:
        bad = _line_at(text, pos)
        what = "end of file" if not ch else repr(ch)
        sink.add(
            "error",
            "parse",
            f"expected ',' or ']' after row {index} at line {bad}, found {what}",
            "a comma is missing between rows, or the list is not closed",
            row=index,
            line=bad,
        )
    return None


def _json_objects(text: str, pos: int, sink: Sink, meta: dict[str, str]) -> Iterator[Record]:
    """A .json file starting with '{': one object (not a dataset) or JSON lines (datasets reads those too)."""
    try:
        _, end = json.JSONDecoder().raw_decode(text, pos)
    except json.JSONDecodeError:
        end = -1
    if end >= 0 and _skip_ws(text, end) == len(text):
        sink.add(
            "error",
            "parse",
            "the top level is a single JSON object, not a list of rows",
            "wrap the rows in a list [ ... ], or write one row per line (JSONL)",
            line=1,
        )
        return
    meta["container"] = "jsonl"
    yield from jsonl_lines(text.splitlines(), sink)


def read_jsonl(path: Path, sink: Sink) -> Iterator[Record]:
    """JSON lines, streamed; a bad line is reported with its number and reading goes on with the next one."""
    with path.open("rb") as fh:
        yield from jsonl_lines(fh, sink)


def jsonl_lines(lines: Iterable[bytes | str], sink: Sink) -> Iterator[Record]:
    """One row per non-blank line; a line that is not UTF-8 or not JSON is a problem and a `Record(ok=False)`."""
    index = 0
    for lineno, raw in enumerate(lines, 1):
        text = _decode_line(raw, lineno, index + 1, sink)
        if text is not None and not text.strip():
            continue
        index += 1
        if text is None:
            yield Record(index, lineno, None, ok=False)
            continue
        try:
            value = json.loads(text.strip())
        except json.JSONDecodeError as err:
            sink.add(
                "error",
                "parse",
                f"invalid JSON (column {err.colno}): {err.msg}",
                json_hint(err) + "; each line must be one complete JSON object",
                row=index,
                line=lineno,
            )
            yield Record(index, lineno, None, ok=False)
            continue
        yield Record(index, lineno, value)


def _decode_line(raw: bytes | str, lineno: int, row: int, sink: Sink) -> str | None:
    if isinstance(raw, str):
        return raw
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
    except UnicodeDecodeError as err:
        sink.add(
            "error",
            "encoding",
            f"not UTF-8 (byte {err.start} of the line)",
            "save the file as UTF-8",
            row=row,
            line=lineno,
        )
        return None


# ----------------------------------------------------------------------------------------------- CSV, text


def read_csv(path: Path, sink: Sink) -> Iterator[Record]:
    """CSV rows with their first line; cells are strings, so only flat formats (alpaca, text) fit."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            start = 2
            for index, row in enumerate(reader, 1):
                yield Record(index, start, {k: v for k, v in row.items() if k is not None})  # None: surplus cells
                start = reader.line_num + 1
    except UnicodeDecodeError as err:
        sink.add("error", "encoding", f"not UTF-8 (byte {err.start})", "save the file as UTF-8")
    except csv.Error as err:
        sink.add("error", "parse", f"invalid CSV: {err}", "check quoting of multi-line cells")


def read_text(path: Path, sink: Sink) -> Iterator[Record]:
    """Plain text for pretraining: LLaMA-Factory reads one `text` row per line."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            index = 0
            for lineno, line in enumerate(fh, 1):
                if line.strip():
                    index += 1
                    yield Record(index, lineno, {"text": line.rstrip("\n")})
    except UnicodeDecodeError as err:
        sink.add("error", "encoding", f"not UTF-8 (byte {err.start})", "save the file as UTF-8")


# ----------------------------------------------------------------------------------------------- Parquet, Arrow


def _pyarrow(sink: Sink) -> Any:
    try:
        import pyarrow  # lazy: only Parquet/Arrow need it
        import pyarrow.ipc  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        sink.add("error", "container", "reading Parquet/Arrow needs pyarrow", "pip install pyarrow")
        return None
    return pyarrow


def read_parquet(path: Path, sink: Sink) -> Iterator[Record]:
    pa = _pyarrow(sink)
    if pa is None:
        return
    try:
        pf = pa.parquet.ParquetFile(str(path))
        index = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                index += 1
                yield Record(index, None, row)
    except (pa.ArrowException, OSError) as err:
        sink.add(
            "error",
            "container",
            f"cannot read Parquet: {err}",
            "re-export the file (pyarrow/pandas to_parquet)",
        )


def read_arrow(path: Path, sink: Sink, start: int = 0) -> Iterator[Record]:
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
                    yield Record(index, None, row)
    except (pa.ArrowException, OSError) as err:
        sink.add(
            "error",
            "container",
            f"cannot read Arrow IPC data: {err}",
            "re-create it with datasets' save_to_disk",
        )


def chain_arrow(files: list[Path], sink: Sink) -> Iterator[Record]:
    """The shards of one split as one run of rows, numbered on across files."""
    count = 0
    for f in files:
        for rec in read_arrow(f, sink, start=count):
            count = rec.index
            yield rec


# ----------------------------------------------------------------------------------------------- folders


def saved_split_files(folder: Path) -> list[Path]:
    """The .arrow shards of one `save_to_disk` split, in state.json order when it is there."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        files = [folder / f["filename"] for f in state.get("_data_files", [])]
        if files and all(f.is_file() for f in files):
            return files
    except (OSError, ValueError, TypeError, KeyError):
        pass
    return sorted(folder.glob("*.arrow"))


def saved_splits(path: Path) -> list[tuple[str | None, Path]]:
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


def is_save_to_disk(path: Path) -> bool:
    """A folder written by `datasets`' save_to_disk (a DatasetDict or one split)."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return True
    return any(path.glob("*.arrow")) and (path / "dataset_info.json").is_file()


def lf_dataset_registry(path: Path) -> dict[str, Any] | None:
    """The registry of a LLaMA-Factory dataset_dir (dataset_info.json: names -> entries), or None if not one."""
    try:
        info = json.loads((path / "dataset_info.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(info, dict) and info and all(isinstance(v, dict) for v in info.values()):
        if any(k in v for v in info.values() for k in ("file_name", "hf_hub_url", "ms_hub_url", "script_url")):
            return info
    return None


def source_records(src: Path, split: str | None, sink: Sink) -> Iterator[Record]:
    """The rows of one data file, or of one split of a `save_to_disk` folder (default: train, or the only one)."""
    if src.is_dir():
        if not is_save_to_disk(src):
            raise UserError([Problem(str(src), "not a save_to_disk folder", "convert files one at a time")])
        return chain_arrow(saved_split_files(_split_folder(src, split)), sink)
    container = FILE_TYPES.get(src.suffix.lower())
    if container is None:
        raise UserError([Problem(str(src), f"unsupported file type {src.suffix!r}")])
    return read_file(src, container, sink)


def _split_folder(src: Path, split: str | None) -> Path:
    splits = dict(saved_splits(src))  # {None: folder} for a single saved split
    names = ", ".join(str(n) for n in splits)
    if None in splits:
        return splits[None]
    if split is None and "train" not in splits and len(splits) != 1:
        raise UserError([Problem(str(src), f"several splits: {names}", "pass --split NAME")])
    name = split or ("train" if "train" in splits else next(iter(splits)))
    if name not in splits:
        raise UserError([Problem(str(src), f"no split {name!r}; splits: {names}", "pass --split NAME")])
    return splits[name]


def head_rows(path: Path) -> list[Any]:
    """The first SAMPLE_ROWS readable rows of a data file (of each file of a folder), without reading it all."""
    sink = Sink(str(path))  # problems are `lfw data check`'s business; here only the layout counts
    if path.is_file():
        container = FILE_TYPES.get(path.suffix.lower())
        if container == "json" and path.stat().st_size > HEAD_BYTES:
            rows = first_rows(read_json(path, sink, {}, HEAD_BYTES))
            if rows:
                return rows
        return first_rows(read_file(path, container, sink)) if container else []
    if is_save_to_disk(path):
        try:
            return first_rows(source_records(path, None, sink))
        except UserError:  # several splits and none is `train`: `lfw run` refuses it with the reason
            return []
    if lf_dataset_registry(path) is not None:
        return []
    return [
        row for f in sorted(path.iterdir()) if f.is_file() and f.suffix.lower() in FILE_TYPES for row in head_rows(f)
    ]


def first_rows(records: Iterable[Record]) -> list[Any]:
    """The readable values among the first SAMPLE_ROWS records."""
    rows = []
    for rec in records:
        if rec.ok:
            rows.append(rec.value)
        if rec.index >= SAMPLE_ROWS:
            break
    return rows
