#!/usr/bin/env bash
# Trainings on a lent GPU, run side by side on the one device, each stopped after BUDGET seconds
# and finished at its newest checkpoint (`--resume --steps N`: EMA weights and final eval written),
# then packed for the device tool: $OUT/runs.tar.part-* (15 MB pieces; `cat` them and untar here).
#   OUT=... BUDGET=400 bash scripts/gpu_train.sh configs/gpu/muse-128-gpu.json configs/gpu/eq64-*.json
# Each run folder comes back without checkpoints, its EMA transformer stored in fp16. The Python
# it runs: scripts/gpu_env.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu-train}
BUDGET=${BUDGET:-400}
mkdir -p "$OUT" runs/gpu
source scripts/gpu_env.sh
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=4
names=()
train() {  # config -> runs/gpu/NAME, stopped at BUDGET, finished at its newest checkpoint
    local cfg=$1 name run step
    name=$(basename "$cfg" .json); run=runs/gpu/$name
    timeout -s INT "$BUDGET" "$PY" -m fastmuse train transformer --config "$cfg" --out "$run" > "$run.log" 2>&1
    step=$(ls "$run/checkpoints" 2>/dev/null | sed -n 's/^step-0*//p' | sort -n | tail -1)
    if [ ! -f "$run/transformer/model.safetensors" ] && [ -n "$step" ]; then
        "$PY" -m fastmuse train transformer --config "$cfg" --out "$run" --resume --steps "$step" >> "$run.log" 2>&1
    fi
    echo "$name: finished at step ${step:-?}"
}
for cfg in "$@"; do  # side by side: give runs distinct cache_dirs (no two builds of one cache)
    names+=("$(basename "$cfg" .json)")
    train "$cfg" &
done
wait
nvidia-smi --query-gpu=name,memory.used --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
for name in "${names[@]}"; do  # EMA weights in fp16 (the transfer's size), manifest to match
    t=runs/gpu/$name/transformer
    if [ -f "$t/model.safetensors" ]; then
        "$PY" -m fastmuse convert "$t" "$t.fp16" --precision fp16 && rm -rf "$t" && mv "$t.fp16" "$t"
    fi
done
tar -czf - --exclude=checkpoints -C runs gpu | split -b 15M -d - "$OUT/runs.tar.part-"
ls -la "$OUT"
