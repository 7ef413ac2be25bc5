"""GPU memory probe for scripts/gpu_seed002.sh: put this folder first on PYTHONPATH, set GPU_PEAK_DIR.

Only in LLaMA-Factory's processes (cmdline names llamafactory), a daemon thread waits until the process has
initialised CUDA by itself (it never imports torch or opens a CUDA context: lfw's own process stays out), then
every 0.5 s appends torch.cuda memory_allocated / memory_reserved and their maxima to timeline-PID.csv and
rewrites peak-PID.json, so the figures survive a kill; an atexit hook writes the final maxima.
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


def _cuda():
    """torch.cuda once this process has initialised it itself, else None (torch may be half-imported)."""
    torch = sys.modules.get("torch")
    try:
        return torch.cuda if torch is not None and torch.cuda.is_initialized() else None
    except AttributeError:
        return None


def _record(out: str, pid: int, t0: float, timeline) -> None:
    cuda = _cuda()
    if cuda is None:
        return
    peak = {
        "pid": pid,
        "cmdline": _cmdline()[:300],
        "max_allocated": cuda.max_memory_allocated(),
        "max_reserved": cuda.max_memory_reserved(),
        "allocated": cuda.memory_allocated(),
        "reserved": cuda.memory_reserved(),
        "seconds": round(time.time() - t0, 1),
    }
    timeline.write(
        f"{time.time():.1f},{peak['allocated']},{peak['reserved']},{peak['max_allocated']},{peak['max_reserved']}\n"
    )
    timeline.flush()
    tmp = os.path.join(out, f".peak-{pid}.json")
    with open(tmp, "w") as f:
        json.dump(peak, f)
    os.replace(tmp, os.path.join(out, f"peak-{pid}.json"))


def _start(out: str) -> None:
    pid, t0 = os.getpid(), time.time()
    os.makedirs(out, exist_ok=True)
    timeline = open(os.path.join(out, f"timeline-{pid}.csv"), "a")

    def loop() -> None:
        while True:
            try:
                _record(out, pid, t0, timeline)
            except Exception as exc:  # a probe must never break the training process
                print(f"[gpu probe] {exc!r}", file=sys.stderr)
            time.sleep(0.5)

    threading.Thread(target=loop, name="gpu-peak-probe", daemon=True).start()
    atexit.register(lambda: _record(out, pid, t0, timeline))


if os.environ.get("GPU_PEAK_DIR") and "llamafactory" in _cmdline():
    _start(os.environ["GPU_PEAK_DIR"])
