"""Every row of one file or split: the layout is decided on the first rows, then each row is checked by its
layout's module (alpaca, messages, preference, media), duplicates are flagged, lengths measured and the columns
compared with what LLaMA-Factory will be told to read."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lfw.preflight.data.alpaca import alpaca_conversation
from lfw.preflight.data.columns import OPTIONAL_COLUMNS
from lfw.preflight.data.fields import RowReporter, type_name
from lfw.preflight.data.layout import DataFormat, present_columns, resolve_format
from lfw.preflight.data.lengths import Lengths, length_stats
from lfw.preflight.data.media import MediaChecker
from lfw.preflight.data.messages import messages_conversation
from lfw.preflight.data.options import Options
from lfw.preflight.data.readers import SAMPLE_ROWS, Record
from lfw.preflight.data.report import DataReport, Sink, make_report
from lfw.preflight.data.samples import Conversation, aligned


def _json_default(obj: Any) -> str:
    if isinstance(obj, bytes | bytearray):
        return hashlib.blake2b(bytes(obj), digest_size=16).hexdigest()
    return repr(obj)


class RowChecker(RowReporter):
    """Validates rows of one format the way LLaMA-Factory's converters read them, collecting every problem."""

    def __init__(self, fmt: DataFormat | None, media_dir: Path, sink: Sink) -> None:
        super().__init__(sink)
        self.fmt = fmt
        self.media = MediaChecker(media_dir)
        self.seen: dict[bytes, int] = {}
        self.first_seen: dict[str, int] = {}  # every key of the data -> first row that has it

    def check(self, rec: Record) -> Conversation | None:
        """The row as a conversation when it has no errors (only clean rows are measured), else None."""
        self.rec = rec
        row = rec.value
        if not isinstance(row, dict):
            self.err(
                "not-object",
                f"the row is a {type_name(row)}, expected a JSON object",
                'each row must be an object like {"instruction": ..., "output": ...}',
            )
            return None
        for key in row.keys() - self.first_seen.keys():
            self.first_seen[str(key)] = rec.index
        self._duplicate(row)
        if self.fmt is None:
            return None
        before = self.sink.error_count
        sample = self._conversation(row, self.fmt)
        if sample is None:
            return None
        sample.tools = self._tools(row, self.fmt)
        self.media.check(self, row, sample, self.fmt)
        return sample if self.sink.error_count == before else None

    def _conversation(self, row: dict, fmt: DataFormat) -> Conversation | None:
        if fmt.style == "messages":
            return messages_conversation(self, row, fmt)
        if fmt.style == "text":
            text = self.req_str(row, fmt.columns.get("prompt"), "pretraining text")
            return Conversation("", "", [("user", text)], []) if text is not None else None
        return alpaca_conversation(self, row, fmt)

    def _duplicate(self, row: dict) -> None:
        try:
            text = json.dumps(row, sort_keys=True, ensure_ascii=False, default=_json_default)
        except (TypeError, ValueError):  # keys of mixed types cannot be sorted; such rows are odd anyway
            return
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        first = self.seen.setdefault(key, self.rec.index)
        if first != self.rec.index:
            self.warn("duplicate", f"exact duplicate of row {first}", "drop duplicates: they overweight one example")

    def _tools(self, row: dict, fmt: DataFormat) -> str:
        key = fmt.columns.get("tools")
        value = row.get(key) if key else None
        if value is None or value == "":
            return ""
        if isinstance(value, list | dict) and fmt.formatting == "openai":
            return json.dumps(value, ensure_ascii=False)
        if not isinstance(value, str):
            self.err(
                "wrong-type",
                f"{key!r} is a {type_name(value)}, expected a JSON string of tool schemas",
                f"store {key!r} as json.dumps(list_of_tools)",
            )
            return ""
        try:
            json.loads(value)
        except ValueError:
            self.err("tools-json", f"{key!r} is not valid JSON", "LLaMA-Factory parses it with json.loads; fix it")
        return value


def check_records(
    path: Path,
    name: str,
    container: str,
    records: Iterable[Record],
    opts: Options,
    media_dir: Path,
    fixed: DataFormat | None = None,
    sink: Sink | None = None,
) -> DataReport:
    """Detect the format on the first rows, then check every row, deduplicate and measure lengths."""
    sink = sink or Sink(name)
    it = iter(records)
    head = [rec for _, rec in zip(range(SAMPLE_ROWS), it, strict=False)]
    fmt = resolve_format([r.value for r in head if r.ok], opts, fixed, sink)
    checker = RowChecker(fmt, media_dir, sink)
    lengths = Lengths(opts.tokenizer, opts.cutoff_len, sink) if opts.tokenizer is not None else None
    rows = 0
    for rec in _chain(head, it):
        rows = max(rows, rec.index)
        sample = checker.check(rec) if rec.ok else None
        if sample is None:
            continue
        if lengths is not None:
            lengths.add(rec, sample)
        if opts.samples is not None and fmt is not None:
            opts.samples.append(aligned(path, rec, sample, fmt, media_dir))
    if fmt is not None:
        check_columns(checker.first_seen, fmt, fixed is not None, sink)
    if rows == 0 and not sink.error_count:
        sink.add("error", "empty-dataset", "no rows", "the file has no data rows")
    if lengths is not None:
        lengths.flush()
    report = make_report(path, container, fmt.name if fmt else None, rows, sink, fmt)
    if lengths is not None and lengths.values:
        report.lengths = length_stats(lengths.values, opts.cutoff_len)
        report.raw_lengths = lengths.values
    return report


def _chain(head: list[Record], rest: Iterator[Record]) -> Iterator[Record]:
    yield from head
    yield from rest


def check_columns(first_seen: dict[str, int], fmt: DataFormat, registered: bool, sink: Sink) -> None:
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
    _unregistered_columns(first_seen, fmt, registered, sink)


def _unregistered_columns(first_seen: dict[str, int], fmt: DataFormat, registered: bool, sink: Sink) -> None:
    wanted = present_columns(first_seen, fmt.style)
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
