"""CLI latency: whole-process wall and CPU medians of lfw commands against `llamafactory-cli version`.

Run from the repository root: `.venv/bin/python scripts/bench_cli.py [--runs 10]`. Wall time moves with the
machine's load, so the commands run round-robin, and each one's CPU time (user + system) and the load average
are printed too.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import time

LFW = ".venv/bin/lfw"
COMMANDS = [
    [LFW, "--help"],
    [LFW, "render", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "4"],
    [LFW, "render", "recipes/tiny_cpu_demo.yml"],
    [LFW, "plan", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "4", "--gpu-mem", "80"],
    [LFW, "data", "check", "build/tiny/data/sft_alpaca.json"],
    [".venv/bin/llamafactory-cli", "version"],
]
BASELINE = COMMANDS[-1]
TARGET = [LFW, "render", "recipes/qwen3_14b_qlora_4gpu.yml", "--gpus", "4"]


def run_once(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {proc.returncode}: {proc.stderr.decode()[-400:]}")
    return wall, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    samples: dict[tuple[str, ...], list[tuple[float, float]]] = {tuple(argv): [] for argv in COMMANDS}
    for round_ in range(args.warmup + args.runs):  # round-robin: a change in the load hits every command alike
        for argv in COMMANDS:
            sample = run_once(argv)
            if round_ >= args.warmup:
                samples[tuple(argv)].append(sample)
    results = {}
    for argv, runs in samples.items():
        results[argv] = statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)
        print(f"{results[argv][0] * 1e3:9.0f} ms wall {results[argv][1] * 1e3:9.0f} ms cpu  {' '.join(argv)}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    (lf_wall, lf_cpu), (lfw_wall, lfw_cpu) = results[tuple(BASELINE)], results[tuple(TARGET)]
    print(f"llamafactory-cli version / lfw render: {lf_wall / lfw_wall:.1f}x wall, {lf_cpu / lfw_cpu:.1f}x cpu")


if __name__ == "__main__":
    main()
