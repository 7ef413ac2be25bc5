"""Token lengths of the checked rows, the basis for picking cutoff_len (seed 003's OOM ladder).

Rows are rendered in approximate ChatML and counted with the model's fast tokenizer (the `tokenizers` library
only: transformers would add seconds of import time for a count); rows over cutoff_len become warnings.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lfw.infra.errors import Problem, UserError
from lfw.preflight.data.report import LengthStats, Sink

if TYPE_CHECKING:
    from lfw.preflight.data.readers import Record
    from lfw.preflight.data.samples import Conversation

BATCH = 512  # rows per tokenizer call: the Rust tokenizer is fast in bulk


def render_chatml(system: str, tools: str, turns: list[tuple[str, str]]) -> str:
    """Approximate ChatML rendering of a conversation: good enough for length statistics, not for training."""
    names = {"user": "user", "assistant": "assistant", "observation": "tool", "function": "assistant"}
    sys_text = system + (f"\n\n# Tools\n{tools}" if tools else "")
    parts = [f"<|im_start|>system\n{sys_text}<|im_end|>\n"] if sys_text else []
    parts += [f"<|im_start|>{names.get(role, role)}\n{content}<|im_end|>\n" for role, content in turns]
    return "".join(parts)


def _render_longest(sample: Conversation) -> str:
    variants = sample.variants or [[]]
    texts = [render_chatml(sample.system, sample.tools, sample.prompt + v) for v in variants]
    return max(texts, key=len)


class Lengths:
    """Token lengths in batches; rows over cutoff_len become `truncated` warnings."""

    def __init__(self, tokenizer: Any, cutoff_len: int | None, sink: Sink) -> None:
        self.tokenizer, self.cutoff_len, self.sink = tokenizer, cutoff_len, sink
        self.values: list[int] = []
        self.pending: list[tuple[Record, str]] = []

    def add(self, rec: Record, sample: Conversation) -> None:
        self.pending.append((rec, _render_longest(sample)))
        if len(self.pending) >= BATCH:
            self.flush()

    def flush(self) -> None:
        clean = [t.encode("utf-8", "replace").decode("utf-8") for _, t in self.pending]  # lone surrogates
        encoded = self.tokenizer.encode_batch(clean, add_special_tokens=False) if clean else []
        cutoff = self.cutoff_len
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


def length_stats(lengths: list[int], cutoff_len: int | None) -> LengthStats:
    """Percentiles (nearest rank) and the cutoff_len that covers 95% of rows, rounded up to 64 or 128."""
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


def _tokenizer_file(model: str | os.PathLike[str]) -> Path:
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
    return found


def load_tokenizer(model: str | os.PathLike[str]) -> Any:
    """A fast tokenizer from tokenizer.json (a folder, the file, or a hub id already in the HF cache)."""
    found = _tokenizer_file(model)
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
