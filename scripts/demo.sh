#!/usr/bin/env bash
# The demo behind `make demo`: the tiny local Qwen3 model through the whole lfw loop on the CPU:
# train (LoRA SFT then DPO) -> merge (lfw export) -> score base against tuned with vLLM (lfw eval) -> compare
# (lfw report). Expects `make tiny setup-vllm` to have run (the Makefile does that first).
set -euo pipefail
cd "$(dirname "$0")/.."
lfw=.venv/bin/lfw

$lfw run recipes/tiny_cpu_demo.yml
run=$(ls -td runs/tiny-cpu-demo/*/ | head -n 1)
run=${run%/}

$lfw export "$run"

# Held-out rows of the same synthetic task (seed 1; training used seed 0) as the benchmark.
.venv/bin/python -c "from lfw.tiny import make_demo_data; make_demo_data('build/tiny/heldout', seed=1, rows=48)"
$lfw eval base=build/tiny/model tuned="$run/export" --backend vllm --max-new-tokens 32 \
    --bench syn=alpaca:build/tiny/heldout/sft_alpaca.json -o "$run/evals"

$lfw report "$run" "$run/evals/base" "$run/evals/tuned" -o "$run/report"
echo "demo done: $run (report: $run/report/report.md)"
