#!/usr/bin/env bash
# Issue 11 item 3: LLaMA-Factory's example settings, the best hand-tuned LLaMA-Factory settings and lfw's
# defaults (bare recipes rendered by `lfw render` on the CPU machine) on the same data, LoRA / QLoRA / full, on
# random-init Qwen3-0.6B and Qwen3-4B architectures, one after another on one GPU in one device call. Each run
# is `llamafactory-cli train <rendered YAML>` with the environment `lfw run` adds (wrapper/lfw/launch/target.py
# launch_env and runner.py stage_environment: PYTHONUNBUFFERED=1, the CLI's folder first on PATH, and with
# DeepSpeed FORCE_TORCHRUN=1 NPROC_PER_NODE=1 NNODES=1 NODE_RANK=0); lfw itself never runs on the device.
# Not part of CI; docs/benchmarks.md has the results and the method.
#
# Here, once (from the repository root):
#   bash ../shared/device/fetch_wheels.sh .whl                  (common, pinned, liger, bnb, ds groups)
#   .venv/bin/python scripts/bench/prep.py tokenizer .bench/tok
#   .venv/bin/python scripts/bench/prep.py data .bench/data/alpaca.json --tokenizer .bench/tok
#   for s in 0.6b 4b; do .venv/bin/python scripts/bench/prep.py shape .bench/models/$s --shape $s --tokenizer .bench/tok; done
#   .venv/bin/python scripts/bench/configs.py                   (renders everything into /tmp/lfwbench -> .bench/root)
# There (device tool, kind nvidia-h200, carry .whl and .bench):  bash scripts/bench/gpu_bench.sh
# SMOKE=1 bash scripts/bench/gpu_bench.sh runs the same loop here on the CPU over the configs of
# `configs.py --smoke` (the tiny model, 3 steps each) to test the script. ONLY=REGEX runs the matching runs only.
# Results in $OUT: summary.md, summary.json, losses.png, live.log and bench.tar.gz (every log and config).
set -uo pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-575}    # seconds for the whole script; the device tool stops a command at 600
RESERVE=${RESERVE:-20}   # kept for the summary and the tar at the end
OUT=${OUT:-/tmp/bench-out}
R=$OUT/bench
REPO=$(pwd)
mkdir -p "$R"
say() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/live.log"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }

finish() {
    $PY scripts/bench/summary.py "$R" "$ROOT/runs.json" --png "$OUT/losses.png" >"$OUT/summary.md" 2>"$R/summary.err"
    cp "$R/summary.json" "$OUT/summary.json" 2>/dev/null
    cat "$OUT/summary.md" "$R/summary.err"
    cp -r "$ROOT/cfg" "$ROOT/recipes" "$ROOT/runs.json" "$R/" 2>/dev/null
    tar -C "$OUT" -czf "$OUT/bench.tar.gz" bench && rm -rf "$R"
    say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}
trap finish EXIT

install() {
    local pip=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target)
    "${pip[@]}" /tmp/site .whl/common/*.whl .whl/pinned/*.whl .whl/liger/*.whl .whl/bnb/*.whl >"$R/pip.log" 2>&1 ||
        { cat "$R/pip.log"; exit 1; }
    (DS_BUILD_OPS=0 "${pip[@]}" /tmp/site_ds --no-build-isolation .whl/ds/*.whl .whl/ds/deepspeed-*.tar.gz \
        >"$R/ds_install.log" 2>&1; echo "rc=$?" >>"$R/ds_install.log") &
    DS_PID=$!
}

facts() {
    nvidia-smi
    nproc
    free -g
    df -h /tmp /dev/shm
    PYTHONPATH=/tmp/site python3 -c 'import importlib.metadata as m, torch
print("torch", torch.__version__, torch.version.cuda)
for p in ("llamafactory", "transformers", "accelerate", "peft", "trl", "datasets", "liger-kernel", "bitsandbytes"):
    print(p, m.version(p))'
}

if [ "${SMOKE:-0}" = 1 ]; then
    PY=$REPO/.venv/bin/python
    CLI=$REPO/.venv/bin/llamafactory-cli
    ROOT=/tmp/lfwbench-smoke
    SITE=""
    SMI=0
else
    PY=python3
    CLI=/tmp/site/bin/llamafactory-cli
    ROOT=/tmp/lfwbench
    SITE=/tmp/site
    SMI=1
    say "installing wheels"
    install
    facts >"$R/facts.txt" 2>&1
    # Models and run outputs in RAM when /dev/shm has room: the final saves (8 GB for the 4B) then cost little.
    if [ "$(df -k --output=avail /dev/shm | tail -1)" -gt $((40 * 1024 * 1024)) ]; then
        mkdir -p /dev/shm/lfwbench && ln -sfn /dev/shm/lfwbench "$ROOT"
    fi
    mkdir -p "$ROOT" && cp -a .bench/root/. "$ROOT/"
    say "building random weights"
    PYTHONPATH=/tmp/site python3 scripts/bench/prep.py weights "$ROOT/m/0.6b" "$ROOT/m/4b" 2>&1 | tee -a "$OUT/live.log"
    wait "$DS_PID"
    say "deepspeed install: $(tail -1 "$R/ds_install.log")"
fi

# One line per run, in runs.json's order: name, estimated seconds, deepspeed (0/1), config path.
runs() {
    $PY -c 'import json, sys
for r in json.load(open(sys.argv[1]))["runs"]:
    print(r["name"], r["est_s"], int(r["deepspeed"]), r["config"])' "$ROOT/runs.json"
}

one_run() {
    local name=$1 est=$2 ds=$3 config=$4 dir=$R/$1 limit start rc out_dir
    mkdir -p "$dir/probe"
    limit=$(($(left) - RESERVE))
    if [ "$limit" -lt "$est" ]; then
        echo skipped >"$dir/rc"
        say "$name: skipped (${limit}s left for an estimated ${est}s)"
        return
    fi
    [ "$limit" -gt $((3 * est)) ] && limit=$((3 * est))
    local env=(PYTHONUNBUFFERED=1 "PATH=$(dirname "$CLI"):$PATH" "BENCH_PROBE_DIR=$dir/probe"
        "PYTHONPATH=$REPO/scripts/bench/site${SITE:+:$SITE}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
        DISABLE_VERSION_CHECK=1)
    [ "$ds" = 1 ] && env+=(FORCE_TORCHRUN=1 NPROC_PER_NODE=1 NNODES=1 NODE_RANK=0
        "PYTHONPATH=$REPO/scripts/bench/site:$SITE:/tmp/site_ds")
    [ "$SMOKE" = 1 ] && env+=(CUDA_VISIBLE_DEVICES=)
    if [ "$SMI" = 1 ]; then
        nvidia-smi --query-gpu=timestamp,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 250 \
            >"$dir/smi.csv" &
        SMI_PID=$!
    fi
    say "$name: llamafactory-cli train $config (limit ${limit}s)"
    echo "env ${env[*]} $CLI train $config" >"$dir/command.txt"
    start=$(date +%s)
    env "${env[@]}" timeout -k 10 -s INT "$limit" "$CLI" train "$config" >"$dir/log.txt" 2>&1
    rc=$?
    echo $(($(date +%s) - start)) >"$dir/wall_s"
    echo "$rc" >"$dir/rc"
    [ "$SMI" = 1 ] && kill "$SMI_PID" 2>/dev/null
    out_dir=$(grep -m1 '^output_dir:' "$config" | sed 's/^output_dir: *//; s/"//g')
    cp "$out_dir/trainer_log.jsonl" "$out_dir/training_loss.png" "$dir/" 2>/dev/null
    rm -rf "$out_dir"
    say "$name: rc $rc in $(cat "$dir/wall_s")s; last log: $(tail -1 "$dir/trainer_log.jsonl" 2>/dev/null | cut -c1-160)"
}

SMOKE=${SMOKE:-0}
while read -r name est ds config; do
    if [[ "$name" =~ ${ONLY:-.} ]]; then one_run "$name" "$est" "$ds" "$config"; fi
done < <(runs)
exit 0
