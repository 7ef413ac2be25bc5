#!/usr/bin/env bash
# Seed 002 (recipes/qwen3_14b_qlora_4gpu.yml: Qwen3-14B QLoRA 4-bit, fp16, ZeRO-3 CPU offload, sharegpt)
# scaled to one GPU and run through `lfw run` on a random-init Qwen3-14B, with GPU memory measured three
# ways (nvidia-smi sampled, torch maxima through gpu_seed002_site/sitecustomize.py, LLaMA-Factory's
# RECORD_VRAM) and `lfw plan` for the same recipe next to it. Not part of CI; docs/benchmarks.md has the results.
#
# On the lent GPU machine (device tool, from the repo root, carry .whl and .dev):
#   here, once:  bash ../shared/device/fetch_wheels.sh .whl        (common, pinned, bnb, ds groups)
#                .venv/bin/python scripts/gpu_seed002_prep.py tokenizer .dev/tok
#   there:       bash scripts/gpu_seed002.sh
# SMOKE=1 bash scripts/gpu_seed002.sh runs the same flow here on the CPU with build/tiny (no wheels, no
# DeepSpeed, 3 steps) to test the script. Results land in $OUT: live.log (streamed as the run goes),
# summary.json and seed002.tar.gz (every log, table and rendered file; no weights).
set -uo pipefail
T0=$(date +%s)
BUDGET=${BUDGET:-550}     # seconds for the whole script; the device tool kills a command at 600
STEPS=${STEPS:-20}
GLOBAL_BATCH=${GLOBAL_BATCH:-4}   # micro batch 2 (the recipe's) x 2 accumulation on one GPU
OUT=${OUT:-/tmp/seed002-out}
R=$OUT/seed002
W=/tmp/s2
REPO=$(pwd)
mkdir -p "$R/torch" "$W"
say() { echo "[$(($(date +%s) - T0))s] $*"; }
left() { echo $((BUDGET - ($(date +%s) - T0))); }

finish() {
    [ -n "${SMI_PID:-}" ] && kill "$SMI_PID" 2>/dev/null
    run_dir=$(ls -td "$W"/runs/*/*/ 2>/dev/null | head -1)
    if [ -n "$run_dir" ]; then
        mkdir -p "$R/run"
        (cd "$run_dir" && find . -type f ! -name '*.safetensors' ! -name '*.bin' ! -name '*.pt' ! -name '*.pth' \
            -size -20M -print0 | xargs -0 -r cp --parents -t "$R/run")
        $PY scripts/gpu_seed002_prep.py summary "$run_dir" "$R/smi.csv" "$R/torch" --plan "$R/plan_and_render.txt" \
            >"$R/summary.json" 2>"$R/summary.err"
    fi
    grep -m3 "Quantizing model" "$OUT/live.log" >"$R/quantizing.txt" 2>/dev/null
    cp "$R/summary.json" "$OUT/summary.json" 2>/dev/null
    tar -C "$OUT" -czf "$OUT/seed002.tar.gz" seed002 && rm -rf "$R"
    say "done; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
}
trap finish EXIT

if [ "${SMOKE:-0}" = 1 ]; then
    PY=$REPO/.venv/bin/python
    export LFW_LLAMAFACTORY_CLI=$REPO/.venv/bin/llamafactory-cli
    SITE=""
    MODEL=$REPO/build/tiny/model
    STEPS=3
    EXTRA=(--set hardware.device=cpu --set hardware.deepspeed=none --set training.precision=auto
        --set training.cutoff_len=256)
    GPUS=()
    ROWS=(--rows 40 --words 200)
else
    PY=python3
    export LFW_LLAMAFACTORY_CLI=/tmp/site/bin/llamafactory-cli
    SITE=/tmp/site:/tmp/site_ds
    {
        nvidia-smi
        nproc
        free -g
        df -h /tmp /dev/shm
        uname -r
        python3 -c 'import torch; print("torch", torch.__version__, torch.version.cuda)'
    } >"$R/facts.txt" 2>&1
    say "installing wheels"
    PIP=(python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target)
    "${PIP[@]}" /tmp/site .whl/common/*.whl .whl/pinned/*.whl .whl/bnb/*.whl >"$R/pip.log" 2>&1 || {
        cat "$R/pip.log"
        exit 1
    }
    (DS_BUILD_OPS=0 "${PIP[@]}" /tmp/site_ds --no-build-isolation .whl/ds/*.whl .whl/ds/deepspeed-*.tar.gz \
        >"$R/ds_install.log" 2>&1; echo "rc=$?" >>"$R/ds_install.log") &
    DS_PID=$!
    # 30 GB of bf16 shards: RAM-backed /dev/shm when it has room (disk speed unknown), else /tmp.
    shm_free=$(df -k --output=avail /dev/shm 2>/dev/null | tail -1)
    if [ "${shm_free:-0}" -gt $((40 * 1024 * 1024)) ]; then MODEL=/dev/shm/q14; else MODEL=$W/q14; fi
    say "building the random-init Qwen3-14B in $MODEL"
    PYTHONPATH=/tmp/site python3 scripts/gpu_seed002_prep.py model "$MODEL" --tokenizer .dev/tok 2>&1 |
        tee "$R/model_build.log" || exit 1
    wait "$DS_PID"
    say "deepspeed install: $(tail -1 "$R/ds_install.log")"
    EXTRA=()
    GPUS=(--gpus 1)
    ROWS=(--rows 200 --words 1400)
fi

export PYTHONPATH=$REPO/scripts/gpu_seed002_site:$REPO/wrapper${SITE:+:$SITE}
export GPU_PEAK_DIR=$R/torch RECORD_VRAM=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 DISABLE_VERSION_CHECK=1
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 COLUMNS=160
$PY scripts/gpu_seed002_prep.py data "$W/seed002.json" "${ROWS[@]}"
RECIPE=recipes/qwen3_14b_qlora_4gpu.yml
SETS=(--set "model.path=$MODEL" --set "stages.0.datasets.0.path=$W/seed002.json" --set hardware.gpus=1
    --set "training.global_batch_size=$GLOBAL_BATCH" --set "training.max_steps=$STEPS"
    --set training.logging_steps=1 --set "output_dir=$W/runs"
    --set llamafactory.include_num_input_tokens_seen=true "${EXTRA[@]}")
{
    echo "lfw plan $RECIPE --gpus 1 --gpu-mem 139 ${SETS[*]}"
    $PY -m lfw.cli plan "$RECIPE" --gpus 1 --gpu-mem 139 "${SETS[@]}"
    echo
    echo "lfw plan $RECIPE --gpus 1 ${SETS[*]}   (memory detected)"
    $PY -m lfw.cli plan "$RECIPE" --gpus 1 "${SETS[@]}"
    echo
    $PY -m lfw.cli render "$RECIPE" "${GPUS[@]}" "${SETS[@]}"
} >"$R/plan_and_render.txt" 2>&1
PLAN_GIB=$(grep -m1 -oP 'peak per GPU[^0-9]*\K[0-9.]+' "$R/plan_and_render.txt")
say "lfw plan: peak per GPU $PLAN_GIB GiB"

if [ "${SMOKE:-0}" != 1 ]; then
    nvidia-smi --query-gpu=timestamp,memory.used --format=csv,noheader,nounits -lms 500 >"$R/smi.csv" &
    SMI_PID=$!
fi
limit=$(($(left) - 45))
say "lfw run (time limit ${limit}s)"
echo "lfw run $RECIPE ${GPUS[*]} --stream ${SETS[*]}" >"$R/command.txt"
timeout -k 20 -s INT "$limit" $PY -m lfw.cli run "$RECIPE" "${GPUS[@]}" --stream "${SETS[@]}" 2>&1 |
    tee "$OUT/live.log"
rc=${PIPESTATUS[0]}
say "lfw run exit code $rc"
echo "$rc" >"$R/lfw_rc.txt"
exit 0
