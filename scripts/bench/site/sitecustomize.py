"""Token probe for scripts/bench/gpu_bench.sh: put this folder first on PYTHONPATH and set BENCH_PROBE_DIR.

transformers counts `num_input_tokens_seen` as input_ids.numel(), padding included, and its "non_padding" mode
sums attention_mask, which neat packing fills with segment numbers. So, only in LLaMA-Factory's processes, a
daemon thread waits for LLaMA-Factory's collator module and wraps the SFT collator's __call__: every batch
(built on the CPU, in the data-loader workers too, which fork after the patch) appends "numel, non-pad tokens,
supervised tokens" to tokens-PID.csv. Nothing touches the GPU, so the training loop is not synchronised.
At exit each process that used CUDA writes torch's memory maxima to peak-PID.json.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import time


def _cmdline() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _wrap(cls, out: str) -> None:
    original = cls.__call__

    def call(self, features):
        batch = original(self, features)
        ids, labels = batch.get("input_ids"), batch.get("labels")
        pad = getattr(getattr(self, "tokenizer", None), "pad_token_id", None)
        if ids is not None and labels is not None and pad is not None:
            line = f"{ids.numel()},{int((ids != pad).sum())},{int((labels != -100).sum())}\n"
            with open(os.path.join(out, f"tokens-{os.getpid()}.csv"), "a") as f:
                f.write(line)
        return batch

    cls.__call__ = call


def _patch_when_imported(out: str) -> None:
    for _ in range(6000):  # 10 minutes at most
        module = sys.modules.get("llamafactory.data.collator")
        cls = getattr(module, "SFTDataCollatorWith4DAttentionMask", None) if module else None
        if cls is not None:
            _wrap(cls, out)
            return
        time.sleep(0.1)


def _peaks(out: str) -> None:
    torch = sys.modules.get("torch")
    try:
        if torch is None or not torch.cuda.is_initialized():
            return
        peak = {"max_allocated": torch.cuda.max_memory_allocated(), "max_reserved": torch.cuda.max_memory_reserved()}
    except (AttributeError, RuntimeError):
        return
    with open(os.path.join(out, f"peak-{os.getpid()}.json"), "w") as f:
        json.dump(peak | {"cmdline": _cmdline()[:300]}, f)


def _start() -> None:
    out = os.environ.get("BENCH_PROBE_DIR")
    if not out or "llamafactory" not in _cmdline():
        return
    os.makedirs(out, exist_ok=True)
    threading.Thread(target=_patch_when_imported, args=(out,), daemon=True).start()
    atexit.register(_peaks, out)


_start()
