"""Rows of a local benchmark file or folder, for `lfw eval` (JSONL, JSON with splits, Parquet, CSV,
header-less MMLU CSV, a ``save_to_disk`` folder or a folder of split files).

Training data has its own checker (``lfw.preflight.data``); the plain JSONL/Parquet readers are shared with it.
pyarrow and datasets are imported only when a Parquet file or a ``save_to_disk`` folder is read.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lfw.infra.errors import UserError
from lfw.preflight.data.readers import read_rows

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
DEFAULT_SPLITS = ("test", "validation", "val", "dev", "train")
#: Benchmark names that imply an adapter when no KIND is given (prefix match, lower case).


# --------------------------------------------------------------------------------------------------------
# Reading local files


def _read_jsonl(path: Path) -> list[Any]:
    return read_rows(path, "jsonl")  # the data check's reader: the first bad line is the error, with its fix


def _read_json(path: Path, split: str | None) -> list[Any]:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)  # JSON Lines saved as .json: common enough to accept
    if isinstance(data, dict):  # {"test": [...]} or {"data": [...]}
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        for key in ([split] if split else []) + list(DEFAULT_SPLITS) + ["data", "rows", "examples"]:
            if key in lists:
                return lists[key]
        if len(lists) == 1:
            return next(iter(lists.values()))
        raise UserError(f"{path}: a JSON object without a list of rows (keys: {', '.join(data)})")
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of rows, found {type(data).__name__}")
    return data


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """CSV with a header; MMLU's original header-less files (question,A,B,C,D,answer) are recognised."""
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return []
    header = rows[0]
    if len(header) == 6 and header[5].strip() in tuple("ABCD") and "question" not in header:
        header, body = ["question", "A", "B", "C", "D", "answer"], rows
    else:
        body = rows[1:]
    return [dict(zip(header, row, strict=False)) for row in body]


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    return read_rows(path, "parquet")


def _read_saved_dataset(path: Path, split: str | None) -> list[dict[str, Any]]:
    """A ``datasets`` ``save_to_disk`` folder: a Dataset, or a DatasetDict (split chosen or guessed)."""
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError as err:
        raise UserError(f"{path} is a `datasets` folder; reading it needs: pip install datasets") from err
    data = load_from_disk(str(path))
    if isinstance(data, DatasetDict):
        data = data[_pick_split(path, list(data), split)]
    elif split:
        raise UserError(f"{path} holds one split only; drop '@{split}'")
    return data.to_list()


def _pick_split(path: Path, splits: list[str], wanted: str | None) -> str:
    if wanted:
        if wanted not in splits:
            raise UserError(f"{path} has no split {wanted!r}; it has: {', '.join(splits)}")
        return wanted
    for name in DEFAULT_SPLITS:
        if name in splits:
            return name
    if len(splits) == 1:
        return splits[0]
    raise UserError(f"{path} has several splits ({', '.join(splits)}); pick one with {path}@SPLIT")


def _split_of(file: Path) -> str:
    """The split a data file belongs to by its name (``test-00000-of-00001.parquet`` -> ``test``)."""
    tokens = file.stem.lower().replace("-", "_").replace(".", "_").split("_")
    return next((s for s in DEFAULT_SPLITS if s in tokens), "")


def _read_folder(path: Path, split: str | None) -> list[dict[str, Any]]:
    """A folder of data files (a downloaded hub snapshot): the files of one split, or all of them."""
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    if not files:
        raise UserError(f"{path}: no {'/'.join(DATA_SUFFIXES)} files and no save_to_disk dataset")
    splits = sorted({_split_of(f) for f in files} - {""})
    if split or len(splits) > 1:
        wanted = _pick_split(path, splits, split)
        files = [f for f in files if _split_of(f) == wanted]
    rows: list[dict[str, Any]] = []
    for file in files:
        rows += read_records(file)
    return rows


def read_records(path: str | Path, split: str | None = None) -> list[dict[str, Any]]:
    """Rows of a local benchmark: JSONL, JSON, Parquet, CSV, a ``save_to_disk`` folder or a data folder."""
    path = Path(path)
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            rows = _read_saved_dataset(path, split)
        else:
            rows = _read_folder(path, split)
    elif not path.is_file():
        raise UserError(f"benchmark file {path} does not exist")
    elif path.suffix == ".jsonl":
        rows = _read_jsonl(path)
    elif path.suffix == ".json":
        rows = _read_json(path, split)
    elif path.suffix == ".csv":
        rows = _read_csv(path)
    elif path.suffix == ".parquet":
        rows = _read_parquet(path)
    else:
        raise UserError(f"{path}: unknown benchmark format {path.suffix!r}; use {', '.join(DATA_SUFFIXES)}")
    bad = [i for i, row in enumerate(rows) if not isinstance(row, dict)]
    if bad:
        raise UserError(f"{path}: row {bad[0]} is not an object (each row needs named fields)")
    return rows
