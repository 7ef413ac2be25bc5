#!/usr/bin/env bash
# The demo behind `make demo`: the tiny local Qwen3 model through the whole lfw pipeline on the CPU, from one
# recipe and one `lfw run`: train (LoRA SFT then DPO) -> merge both stages (export) -> score base, SFT and DPO
# (eval, with vLLM when its environment exists, else transformers) -> compare (report). Expects `make tiny`
# (and `make setup-vllm` for the vLLM backend) to have run (the Makefile does that first).
set -euo pipefail
cd "$(dirname "$0")/.."

# The benchmark: held-out rows of the same synthetic task (seed 1; training used seed 0).
.venv/bin/python -c "from lfw.tiny import make_demo_data; make_demo_data('build/tiny/heldout', seed=1, rows=48)"
backend=()
[ -x .venv-vllm/bin/python ] || backend=(--set eval.backend=hf)

.venv/bin/lfw run recipes/tiny_cpu_demo.yml ${backend[@]+"${backend[@]}"}
run=$(ls -td runs/tiny-cpu-demo/*/ | head -n 1)
echo "demo done: ${run%/} (report: ${run%/}/report/report.md)"
