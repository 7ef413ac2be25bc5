"""Time to first step of `lfw run RECIPE`: seconds from launch until a new run's trainer_log.jsonl has a line.

Usage: python scripts/ttfs.py RECIPE OUTPUT_DIR   (OUTPUT_DIR: the recipe's output_dir; docs/benchmarks.md)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def main(recipe: str, runs: Path) -> None:
    before = set(runs.glob("*/*"))
    lfw = Path(sys.executable).with_name("lfw")
    start = time.monotonic()
    proc = subprocess.Popen([str(lfw), "run", recipe], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    first = None
    while first is None and proc.poll() is None:
        logs = [p for p in runs.glob("*/*/*/trainer_log.jsonl") if p.parents[1] not in before]
        if any(p.stat().st_size for p in logs):
            first = time.monotonic() - start
        time.sleep(0.1)
    proc.wait()
    result = f"{first:.1f}" if first is not None else "none"
    print(f"rc={proc.returncode} time_to_first_step_s={result} total_s={time.monotonic() - start:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]).resolve())
