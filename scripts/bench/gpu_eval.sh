#!/usr/bin/env bash
# Issue 11 item 3, last part: samples/s of `lfw eval --backend hf` (transformers, batched greedy generation) on
# the lent GPU, random-init Qwen3-0.6B architecture, alpaca rows of the benchmark's data. Not part of CI.
# lfw is not installed there and the working tree is being edited: the package comes from `git archive HEAD`
# (here: rm -rf .bench/lfwpkg; mkdir -p .bench/lfwpkg; git archive HEAD wrapper | tar -x -C .bench/lfwpkg).
# Runs after scripts/bench/gpu_bench.sh in the same command (it reuses /tmp/site and the model), or alone.
# Results: $OUT/eval.tar.gz and $OUT/eval_summary_bs*.json. The alpaca kind's scoring needs rouge-score (an sdist,
# with nltk and absl-py), which the wheel groups do not carry: on 2026-12-01 generation ran and its time was logged
# ("128 prompts in 68.0s"), then scoring stopped with "scoring needs the Python package 'rouge-score'", so no
# summary.json came back; carry those wheels to get lfw's own samples/s and scores.
set -uo pipefail
OUT=${OUT:-/tmp/bench-out}
R=$OUT/eval
ROOT=/tmp/lfwbench
ROWS=${ROWS:-128}
mkdir -p "$R"
if [ ! -x /tmp/site/bin/llamafactory-cli ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/common/*.whl .whl/pinned/*.whl >"$R/pip.log" 2>&1 || exit 1
fi
# pydantic (lfw's one dependency the image may lack) from the ds group's wheels, apart from DeepSpeed.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site_eval \
    .whl/ds/pydantic*.whl .whl/ds/annotated_types*.whl .whl/ds/typing_inspection*.whl >>"$R/pip.log" 2>&1
if [ ! -f "$ROOT/m/0.6b/model.safetensors" ]; then
    mkdir -p "$ROOT" && cp -a .bench/root/. "$ROOT/"
    PYTHONPATH=/tmp/site python3 scripts/bench/prep.py weights "$ROOT/m/0.6b"
fi
python3 -c 'import json, sys
rows = json.load(open(sys.argv[1]))[: int(sys.argv[3])]
json.dump(rows, open(sys.argv[2], "w"))' "$ROOT/data/alpaca.json" "$R/bench.json" "$ROWS"
export PYTHONPATH=$PWD/.bench/lfwpkg/wrapper:/tmp/site_eval:/tmp/site HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
for bs in 16 64; do
    echo "lfw eval m06=$ROOT/m/0.6b --backend hf --bench alpaca:$R/bench.json --batch-size $bs --max-new-tokens 128" \
        >"$R/command-$bs.txt"
    python3 -m lfw.cli eval "m06=$ROOT/m/0.6b" --backend hf --bench "alpaca:$R/bench.json" --batch-size "$bs" \
        --max-new-tokens 128 -o "$R/bs$bs" 2>&1 | tail -30
    cp "$R/bs$bs/m06/summary.json" "$OUT/eval_summary_bs$bs.json" 2>/dev/null
done
tar -C "$OUT" -czf "$OUT/eval.tar.gz" eval && rm -rf "$R"
ls "$OUT"
