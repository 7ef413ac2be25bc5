"""Dataset checks before any GPU time: container, format, every row, media files and token lengths.

LLaMA-Factory reacts to bad data late and quietly: a malformed row is skipped with one log line ("Invalid role
tag", "Dropped invalid example"), an `<image>` count mismatch crashes the run mid-epoch, and a `datasets`
`save_to_disk` folder is not loadable at all. This package finds all of that up front and names each row (file,
1-based row, line) together with its fix. The rules mirror LLaMA-Factory 0.9.5 (`data/converter.py`,
`data/parser.py`, `data/mm_plugin.py`), so a file that passes here is read by LLaMA-Factory as intended.

This module holds the entry points and walks the containers (a file, a folder of files, a `save_to_disk` folder,
a LLaMA-Factory dataset_dir); `rows` checks the rows of one file. `read_samples` gives the checked rows in
LLaMA-Factory's aligned form (for the behaviour oracle).

Pure logic: no click, no torch/transformers/pandas; pyarrow and tokenizers are imported only when a Parquet or
Arrow file or a tokenizer is actually used, so `lfw data check` on JSON starts instantly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.preflight.data.layout import DataFormat
from lfw.preflight.data.lengths import length_stats
from lfw.preflight.data.options import Options
from lfw.preflight.data.readers import (
    FILE_TYPES,
    Record,
    chain_arrow,
    is_save_to_disk,
    lf_dataset_registry,
    read_file,
    saved_split_files,
    saved_splits,
)
from lfw.preflight.data.report import DataReport, Sink, make_report
from lfw.preflight.data.rows import check_records
from lfw.preflight.data.samples import Sample

SAVE_TO_DISK_FIX = (
    "`lfw run` converts it to JSONL for you; to do it by hand: lfw data convert {path} OUT.jsonl "
    "(or in Python: datasets.load_from_disk(path)['train'].to_json('train.jsonl'))"
)


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
    return _check_path(Path(path), Options.build(fmt, tokenizer_dir, cutoff_len, media_dir, columns, tags, stage))


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
    opts = Options.build(fmt, tokenizer_dir, cutoff_len, media_dir, columns, tags, stage)
    records = (Record(i, None, row) for i, row in enumerate(rows, 1))
    return check_records(Path(name), name, "rows", records, opts, Path(media_dir or "."))


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
    opts = Options.build(fmt, None, None, media_dir, columns, tags, stage)
    opts.samples = []
    _check_path(Path(path), opts)
    return opts.samples


# ----------------------------------------------------------------------------------------------- containers


def _check_path(p: Path, opts: Options) -> DataReport:
    if not p.exists():
        raise UserError(
            [Problem(str(p), "no such file or folder", "check the path (relative to the current directory)")]
        )
    if p.name == "dataset_info.json" and p.is_file() and lf_dataset_registry(p.parent) is not None:
        p = p.parent  # the registry itself: check what it registers
    return _check_dir(p, opts) if p.is_dir() else _check_file(p, opts)


def _check_file(
    path: Path, opts: Options, fixed: DataFormat | None = None, media_dir: Path | None = None
) -> DataReport:
    name = str(path)
    container = FILE_TYPES.get(path.suffix.lower())
    sink = Sink(name)
    if container is None:
        sink.add(
            "error",
            "container",
            f"unsupported file type {path.suffix or '(none)'!r}",
            "LLaMA-Factory loads .json, .jsonl, .csv, .parquet, .arrow and .txt; convert the data to JSONL",
        )
        return make_report(path, "unknown", None, 0, sink)
    meta: dict[str, str] = {}
    records = read_file(path, container, sink, meta)
    media = media_dir or opts.media_dir or path.parent
    report = check_records(path, name, container, records, opts, media, fixed, sink)
    report.container = meta.get("container", report.container)  # a .json file may hold JSON lines
    return report


def _check_dir(path: Path, opts: Options) -> DataReport:
    if is_save_to_disk(path):
        return _check_save_to_disk(path, opts)
    info = lf_dataset_registry(path)
    if info is not None:
        return _check_lf_dataset_dir(path, info, opts)
    return _check_folder(path, opts)


def _check_save_to_disk(path: Path, opts: Options) -> DataReport:
    sink = Sink(str(path))
    sink.add(
        "warning",
        "save-to-disk",
        "this is a `datasets` save_to_disk folder (dataset_dict.json / state.json + .arrow); LLaMA-Factory "
        "cannot load it: it reads a folder as plain data files and fails ('File types should be identical' / "
        "'Allowed file types') - seed 000 lost hours here",
        SAVE_TO_DISK_FIX.format(path=path),
    )
    parts = []
    for split, folder in saved_splits(path):
        files = saved_split_files(folder) if folder.is_dir() else []
        label = f"{path}[{split}]" if split else str(path)
        if not files:
            sink.add(
                "error",
                "container",
                f"split {split or '.'}: no .arrow files in {folder}",
                "re-create the folder with save_to_disk",
            )
            continue
        part_sink = Sink(label)
        records = chain_arrow(files, part_sink)
        media = opts.media_dir or path.parent
        parts.append(check_records(folder, label, "arrow", records, opts, media, None, part_sink))
    return _combine(path, "save_to_disk", parts, sink)


def _check_lf_dataset_dir(path: Path, info: dict[str, Any], opts: Options) -> DataReport:
    """Check every local file registered in dataset_info.json with its registered columns and tags."""
    sink = Sink(str(path / "dataset_info.json"))
    parts, absent = [], []
    hub = 0
    for name, entry in info.items():
        file_name = entry.get("file_name")
        if not file_name:
            hub += 1
        elif not (path / str(file_name)).exists():
            absent.append(str(file_name))
        else:
            part = _check_registered(path, name, entry, opts, sink)
            parts += [part] if part is not None else []
    report = _combine(path, "dataset_dir", parts, sink)
    if absent:
        report.skipped.append(f"{len(absent)} registered file(s) not present: {', '.join(absent)}")
    if hub:
        report.skipped.append(f"{hub} hub dataset(s) (hf_hub_url / ms_hub_url): not local, not checked")
    return report


def _check_registered(path: Path, name: str, entry: dict[str, Any], opts: Options, sink: Sink) -> DataReport | None:
    """One registered file or folder, read with its entry's columns and tags; None when the entry is malformed."""
    try:
        fmt = DataFormat.from_dataset_info(entry)
    except (AttributeError, TypeError):
        sink.add("error", "dataset-info", f"entry {name!r} is malformed", "columns and tags must be objects")
        return None
    target = path / str(entry["file_name"])
    media = opts.media_dir or path
    sub = _check_folder(target, opts, fmt, media) if target.is_dir() else _check_file(target, opts, fmt, media)
    sub.data_format = sub.data_format or fmt
    return sub


def _check_folder(path: Path, opts: Options, fixed: DataFormat | None = None, media: Path | None = None) -> DataReport:
    """A plain folder: LLaMA-Factory loads every entry in it, and all must share one file type."""
    sink = Sink(str(path))
    entries = sorted(path.iterdir())
    types = {p.suffix.lower() for p in entries if p.is_file()}
    subdirs = [p.name for p in entries if p.is_dir()]
    if not entries:
        sink.add("error", "empty-dataset", "the folder is empty", "point to a data file or a folder of data files")
        return make_report(path, "folder", None, 0, sink)
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


def _combine(path: Path, container: str, parts: list[DataReport], sink: Sink) -> DataReport:
    """One report over the parts of a folder: their problems, rows, format (or "mixed") and lengths."""
    for part in parts:
        sink.extend(part)
    names = {p.format for p in parts if p.format}
    fmt_name = names.pop() if len(names) == 1 else ("mixed" if names else None)
    data_format = next((p.data_format for p in parts if p.data_format), None) if fmt_name != "mixed" else None
    rows = sum(p.rows for p in parts)
    report = make_report(path, container, fmt_name, rows, sink, data_format)
    report.parts = parts
    lengths = [n for p in parts for n in p.raw_lengths]
    cutoffs = [p.lengths.cutoff_len for p in parts if p.lengths]
    if lengths:
        report.lengths = length_stats(lengths, cutoffs[0] if cutoffs else None)
    return report
