#!/usr/bin/env bash
# `lfw run` itself on the lent GPU (issue 11): a bare LoRA recipe (lfw's default method) on the random-init
# Qwen3-0.6B shape and the benchmark's 2,000 alpaca rows, with everything left to lfw's detection there
# (nvidia-smi, CPU count; no LFW_GPU_MEM_GIB), then `lfw status` and `lfw export` of the run. Not part of CI;
# docs/benchmarks.md has the results. gpu_bench.sh ran the same kind of recipe through llamafactory-cli directly.
#
# lfw is not installed there and the working tree is being edited: the package comes from `git archive HEAD`
# (here: mkdir -p .bench/lfwpkg2; git archive HEAD wrapper pyproject.toml | tar -x -C .bench/lfwpkg2), plus
# the carried wheels: LLaMA-Factory and the pinned stack, liger, and pydantic (lfw's one dependency the image
# lacks; jinja2, click, rich and pyyaml are in the image). Device tool, kind nvidia-h200, carry .whl and .bench:
#   bash scripts/bench/gpu_lfw_run.sh
# SMOKE=1 bash scripts/bench/gpu_lfw_run.sh runs the same steps here on the CPU (the tiny model, 3 steps, cpu,
# cutoff 256, no liger) with the repository's venv and the same archived package.
# Results in $OUT: lfw_run.tar.gz (recipe, rendered files, manifest, logs, status, export), summary.json, live.log.
set -uo pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-330}   # seconds for the whole script
OUT=${OUT:-/tmp/lfw-run-out}
R=$OUT/lfw_run
REPO=$(pwd)
PKG=$REPO/.bench/lfwpkg2/wrapper
mkdir -p "$R"
say() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/live.log"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }

if [ "${SMOKE:-0}" = 1 ]; then
    PY=$REPO/.venv/bin/python
    ROOT=/tmp/lfw-run-smoke
    MODEL_SRC=$REPO/build/tiny/model
    STEPS=3
    SETS=(--set hardware.device=cpu --set training.cutoff_len=256 --set training.liger_kernel=false)
    export CUDA_VISIBLE_DEVICES=
    export PYTHONPATH=$PKG
    SMI=0
    rm -rf "$ROOT"
    mkdir -p "$ROOT/m"
    cp -a "$MODEL_SRC" "$ROOT/m/0.6b"
else
    PY=python3
    ROOT=/tmp/lfwbench
    STEPS=20
    SETS=()
    SMI=1
    [ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((20 * 1024 * 1024)) ] &&
        mkdir -p /dev/shm/lfwbench && ln -sfn /dev/shm/lfwbench "$ROOT"
    mkdir -p "$ROOT/m"
    say "installing wheels"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
        .whl/common/*.whl .whl/pinned/*.whl .whl/liger/*.whl .whl/ds/pydantic*.whl .whl/ds/annotated_types*.whl \
        .whl/ds/typing_inspection*.whl >"$R/pip.log" 2>&1 || { cat "$R/pip.log"; exit 1; }
    export PYTHONPATH=$PKG:/tmp/site PATH=/tmp/site/bin:$PATH
    cp -a .bench/models/0.6b "$ROOT/m/0.6b"
    say "building random weights"
    python3 scripts/bench/prep.py weights "$ROOT/m/0.6b" 2>&1 | tee -a "$OUT/live.log"
    nvidia-smi >"$R/facts.txt" 2>&1
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DISABLE_VERSION_CHECK=1 PYTHONUNBUFFERED=1
mkdir -p "$ROOT/data"
cp .bench/data/alpaca.json "$ROOT/data/alpaca.json"
cat >"$ROOT/lfw_run_lora_06.yml" <<EOF
name: lfw_run_lora_06
model: {path: $ROOT/m/0.6b, template: qwen3_nothink}
stages: [{stage: sft, datasets: [{path: $ROOT/data/alpaca.json, format: alpaca}]}]
training: {max_steps: $STEPS, logging_steps: 1}      # logging_steps: measurement only
llamafactory: {include_num_input_tokens_seen: true}   # measurement only: total_tokens in trainer_log.jsonl
EOF
cp "$ROOT/lfw_run_lora_06.yml" "$R/recipe.yml"
$PY -c 'import importlib.metadata as m, sys
for p in ("lfw", "llamafactory", "transformers", "accelerate", "peft", "trl", "datasets", "liger-kernel", "torch",
          "pydantic", "jinja2", "click", "rich", "PyYAML"):
    try:
        print(p, m.version(p))
    except m.PackageNotFoundError:
        print(p, "-")
import lfw; print("lfw from", lfw.__file__)' >"$R/versions.txt" 2>&1
cat "$R/versions.txt" | tee -a "$OUT/live.log"

lfw() { local limit=$1; shift; timeout -k 10 -s INT "$limit" "$PY" -m lfw.cli "$@"; }

finish() {
    local run
    run=$(dirname "$(find "$ROOT/runs" -name manifest.json 2>/dev/null | head -1)")
    if [ -d "$run" ]; then
        echo "$run" >"$R/run_dir.txt"
        (cd "$run" && find . -maxdepth 3 \( -name '*.yaml' -o -name '*.json' -o -name '*.jsonl' -o -name '*.log' \
            -o -name '*.txt' \) -size -2M ! -path './export/*' -exec cp --parents {} "$R/" \;)
        ls -laR "$run" >"$R/run_tree.txt" 2>&1
    fi
    $PY - "$R" "$REPO/scripts/bench" <<'PY' >"$OUT/summary.json" 2>"$R/summary.err"
import csv, json, sys
from pathlib import Path
results = Path(sys.argv[1]); sys.path.insert(0, sys.argv[2])
from summary import log_rows, steady, smi
logs = sorted(results.rglob("trainer_log.jsonl"))
rows = log_rows(logs[0]) if logs else []
out = {"trainer_log": str(logs[0]) if logs else None, "steady": steady(rows, 5 if len(rows) > 8 else 2)}
out["losses"] = [[r["current_steps"], round(r["loss"], 4), r.get("total_tokens")] for r in rows]
out["smi"] = smi(results / "smi.csv")
for name in ("run_rc", "status_rc", "export_rc", "run_wall_s", "export_wall_s"):
    p = results / name
    out[name] = p.read_text().strip() if p.exists() else None
print(json.dumps(out, indent=2))
PY
    cat "$OUT/summary.json" "$R/summary.err"
    tar -C "$OUT" -czf "$OUT/lfw_run.tar.gz" lfw_run && rm -rf "$R"
    say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}
trap finish EXIT

if [ "$SMI" = 1 ]; then
    nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 250 \
        >"$R/smi.csv" &
    SMI_PID=$!
fi
say "lfw run (limit $(($(left) - 90))s)"
start=$(date +%s)
lfw $(($(left) - 90)) run "$ROOT/lfw_run_lora_06.yml" --output-dir "$ROOT/runs" "${SETS[@]}" >"$R/lfw_run.out" 2>&1
echo $? >"$R/run_rc"
echo $(($(date +%s) - start)) >"$R/run_wall_s"
[ "$SMI" = 1 ] && kill "$SMI_PID" 2>/dev/null
say "lfw run: rc $(cat "$R/run_rc") in $(cat "$R/run_wall_s")s"
tail -25 "$R/lfw_run.out"
RUN=$(dirname "$(find "$ROOT/runs" -name manifest.json 2>/dev/null | head -1)")
[ -d "$RUN" ] || { say "no run directory"; exit 0; }
lfw 30 status "$RUN" >"$R/status.txt" 2>&1
echo $? >"$R/status_rc"
lfw 30 status "$RUN" --json >"$R/status.json" 2>&1
cat "$R/status.txt"
limit=$(($(left) - 15))
if [ "$limit" -gt 20 ]; then
    say "lfw export (limit ${limit}s)"
    start=$(date +%s)
    lfw "$limit" export "$RUN" >"$R/export.out" 2>&1
    echo $? >"$R/export_rc"
    echo $(($(date +%s) - start)) >"$R/export_wall_s"
    cp "$RUN"/export/lineage.json "$R/" 2>/dev/null
    ls -la "$RUN/export" >"$R/export_tree.txt" 2>&1
    say "lfw export: rc $(cat "$R/export_rc") in $(cat "$R/export_wall_s")s"
    tail -15 "$R/export.out"
else
    say "lfw export skipped (${limit}s left)"
fi
exit 0
