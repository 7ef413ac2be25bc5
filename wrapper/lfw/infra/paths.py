"""Telling a local model folder from a hub id, the one rule render, export, serve and eval share."""

from __future__ import annotations

from pathlib import Path


def looks_local(text: str, base_dir: Path | None = None) -> bool:
    """A local path rather than a hub id: it exists (relative paths start at `base_dir`, default the current
    folder), or starts with ``.``, ``/`` or ``~``, or has more than one ``/`` (a hub id is ``org/name``)."""
    path = Path(text).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    return text.startswith((".", "/", "~")) or text.count("/") > 1 or path.exists()
