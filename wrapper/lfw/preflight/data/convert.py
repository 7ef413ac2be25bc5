"""`lfw data convert` (and `lfw run` for `save_to_disk` folders): any supported container as JSONL that
LLaMA-Factory loads, embedded media written out as files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lfw.infra.errors import Problem, UserError
from lfw.preflight.data.readers import source_records
from lfw.preflight.data.report import Sink

_MAGIC = (
    (b"\x89PNG", ".png"),
    (b"\xff\xd8", ".jpg"),
    (b"GIF8", ".gif"),
    (b"RIFF", ".webp"),
    (b"ID3", ".mp3"),
)


def convert_to_jsonl(path: str | os.PathLike[str], out: str | os.PathLike[str], split: str | None = None) -> Path:
    """Write any supported container (above all `save_to_disk` folders) as JSONL that LLaMA-Factory loads.

    Embedded media (Parquet/Arrow image structs with bytes) are written next to `out` in `<stem>_media/` and
    replaced by relative paths, so `<image>` rows keep working. For a DatasetDict, `split` picks the split
    (default: `train`, or the only one).
    """
    src, dst = Path(path), Path(out)
    if not src.exists():
        raise UserError([Problem(str(src), "no such file or folder")])
    sink = Sink(str(src))
    records = source_records(src, split, sink)
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
    sink.raise_first(f"cannot convert {src}")
    tmp.replace(dst)
    return dst


def _write_media(value: dict, media_dir: Path, base: Path) -> str:
    """An embedded media struct's bytes as a file named by their hash; its path relative to `base`."""
    data = bytes(value["bytes"])
    ext = next((e for m, e in _MAGIC if data.startswith(m)), Path(str(value.get("path") or "")).suffix or ".bin")
    media_dir.mkdir(parents=True, exist_ok=True)
    target = media_dir / (hashlib.blake2b(data, digest_size=12).hexdigest() + ext)
    if not target.exists():
        target.write_bytes(data)
    return target.relative_to(base).as_posix()


def _externalize_bytes(value: Any, media_dir: Path, base: Path) -> Any:
    """Replace embedded media structs ({bytes, path}) by files on disk, as LLaMA-Factory wants paths."""
    if isinstance(value, dict):
        if set(value) <= {"bytes", "path"} and isinstance(value.get("bytes"), bytes | bytearray):
            return _write_media(value, media_dir, base)
        if set(value) <= {"bytes", "path"} and "path" in value:
            return value["path"]
        return {k: _externalize_bytes(v, media_dir, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_externalize_bytes(v, media_dir, base) for v in value]
    if isinstance(value, bytes | bytearray):
        raise UserError([Problem("convert", "a column holds raw bytes that are not media", "drop or decode it first")])
    return value
