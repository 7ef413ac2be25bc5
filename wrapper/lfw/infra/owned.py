"""What lfw writes without ever overwriting: new files, and folders it writes whole (exports, reports).

Why: an interrupted write must never leave half a folder in place, and a folder is only ever replaced when
lfw's own record in it (an export's lineage.json, a report's .lfw-report.json) lists every file there, so a
run directory, an adapter, or a user's files are never deleted by a rerun. Temporary folders get fresh
names: nothing that already exists is reused or removed under a name lfw merely guesses is its own. A file
lfw writes for the user (an sbatch script, a launch task, an imported recipe) is created new or not at all.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

from lfw.infra.errors import Problem, UserError


def write_new_file(path: Path, text: str, exists: Problem) -> None:
    """Create `path` with `text`; when it exists already (even if created in a race), raise `exists` instead."""
    try:
        with open(path, "x", encoding="utf-8") as handle:
            handle.write(text)
    except FileExistsError:
        raise UserError([exists]) from None


def new_dir_beside(final: Path, tag: str) -> Path:
    """A new empty folder next to `final` (same filesystem, so it can be renamed into place)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    while True:
        path = final.with_name(f".{final.name}.{tag}-{secrets.token_hex(4)}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path


def files_in(folder: Path) -> list[str]:
    """Every file (and link) under `folder`, as sorted relative POSIX paths; folders themselves are not listed."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_symlink() or not p.is_dir())


def unlisted(folder: Path, listed: Iterable[str]) -> list[str]:
    """Files in `folder` that a record of what lfw wrote there does not name."""
    known = set(listed)
    return [name for name in files_in(folder) if name not in known]


def swap_in(staging: Path, final: Path) -> None:
    """Move the finished `staging` folder to `final`; an existing `final` (checked by the caller) goes last."""
    old = None
    if final.exists() or final.is_symlink():
        old = new_dir_beside(final, "old")
        final.rename(old / final.name)  # into a fresh folder: the rename cannot land on anything that exists
    staging.rename(final)
    if old is not None:
        shutil.rmtree(old)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "sha256:" + digest.hexdigest()
