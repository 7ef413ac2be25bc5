"""Images, videos and audio of multimodal rows: `<image>` tags match the media list (else LLaMA-Factory's
mm_plugin raises mid-epoch), every file exists relative to media_dir, and its first bytes are really media."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lfw.preflight.data.columns import MEDIA
from lfw.preflight.data.fields import RowReporter, type_name
from lfw.preflight.data.layout import DataFormat
from lfw.preflight.data.samples import Conversation

# Leading bytes of the image types LLaMA-Factory's PIL decodes; others are identified by PIL itself.
_IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")
_REMOTE = ("http://", "https://", "s3://", "gs://", "data:")


class MediaChecker:
    """Checks the media of each row against `media_dir`; where a path is and what is in it is cached per path."""

    def __init__(self, media_dir: Path) -> None:
        self.media_dir = media_dir
        self.cache: dict[str, tuple[str, str | None]] = {}

    def check(self, r: RowReporter, row: dict, sample: Conversation, fmt: DataFormat) -> None:
        """`<image>` count == len(images) per answer variant (else LLaMA-Factory raises); files exist."""
        prompt_text = [content for _, content in sample.prompt]
        variants = [[content for _, content in v] for v in sample.variants] or [[]]
        for kind, tag in MEDIA.items():
            counts = {sum(s.count(tag) for s in prompt_text + v) for v in variants}
            key = fmt.columns.get(kind)
            if not key:
                if any(counts):
                    r.warn(
                        "media-tag-without-media",
                        f"the text has {max(counts)} {tag} tag(s) but the data has no {kind} column",
                        f"add a {kind!r} list, or remove the tags (a vision model would fail on this row)",
                    )
                continue
            items = _media_items(r, row, key)
            if items is None:
                continue
            _check_count(r, counts, tag, key, items)
            for j, item in enumerate(items):
                self._check_file(r, kind, key, j, item)

    def _check_file(self, r: RowReporter, kind: str, key: str, j: int, item: Any) -> None:
        if isinstance(item, dict):
            if isinstance(item.get("bytes"), bytes | bytearray) and item["bytes"]:
                return
            item = item.get("path")
        paths = item if isinstance(item, list) else [item]  # a video may be a list of frame files
        for p in paths:
            if not isinstance(p, str) or not p:
                r.err("wrong-type", f"{key}[{j}] is a {type_name(p)}, expected a file path")
                return
            state, damage = self._locate(p, "images" if isinstance(item, list) else kind)
            if state == "missing":
                r.err(
                    "media-missing",
                    f"{key}[{j}] {p!r} does not exist (looked in {self.media_dir.resolve()})",
                    "fix the path; relative paths are resolved against the data file's folder (media_dir)",
                )
            elif damage:
                r.err(
                    "media-corrupt",
                    f"{key}[{j}] {p!r} {damage}: LLaMA-Factory fails on it when it loads the media",
                    "replace the file with a valid one or drop the row",
                )
            elif state == "cwd":
                r.warn(
                    "media-cwd",
                    f"{key}[{j}] {p!r} exists only relative to the current directory",
                    f"make it relative to {self.media_dir} (LLaMA-Factory's media_dir) or absolute",
                )

    def _locate(self, p: str, kind: str) -> tuple[str, str | None]:
        """Where a media path is (ok, cwd, missing, remote) and what is wrong with its content, cached per path."""
        if p.startswith(_REMOTE) or len(p) > 1024:
            return "remote", None  # URLs and inline base64 are loaded as they are
        found = self.cache.get(p)
        if found is None:
            try:
                local = self.media_dir / p
                if local.exists():
                    found = ("ok", media_damage(local, kind))
                elif Path(p).exists():
                    found = ("ok" if Path(p).is_absolute() else "cwd", media_damage(Path(p), kind))
                else:
                    found = ("missing", None)
            except (OSError, ValueError):  # names with NUL bytes or too long for the filesystem
                found = ("missing", None)
            self.cache[p] = found
        return found


def _media_items(r: RowReporter, row: dict, key: str) -> list | None:
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, str | dict):
        return [value]
    if not isinstance(value, list):
        r.err(
            "wrong-type",
            f"{key!r} is a {type_name(value)}, expected a list of file paths",
            f'write "{key}": ["path/to/file", ...]',
        )
        return None
    return value


def _check_count(r: RowReporter, counts: set[int], tag: str, key: str, items: list) -> None:
    for n in sorted(counts):
        if n != len(items):
            r.err(
                "media-count",
                f"{n} {tag} tag(s) in the text but {len(items)} item(s) in {key!r}",
                f"put exactly one {tag} in the text per entry of {key!r} (LLaMA-Factory raises "
                "'The number of ... does not match')",
            )
            return


def media_damage(path: Path, kind: str) -> str | None:
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
        return _image_damage(path, head)
    return _text_damage(head, kind)


def _image_damage(path: Path, head: bytes) -> str | None:
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


def _text_damage(head: bytes, kind: str) -> str | None:
    """Audio or video that is really text (an error page); binary heads pass: their containers are too many."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return None  # binary: the audio/video container formats are too many to tell apart here
        text = head[: err.start].decode("utf-8")  # the 512 bytes ended inside a character
    if all(ch.isprintable() or ch.isspace() for ch in text):
        return f"holds text, not {kind[:-1]} data"
    return None
