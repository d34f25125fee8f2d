#!/usr/bin/env bash
# Trainings on a lent GPU, run side by side on the one device, each stopped after BUDGET seconds
# and finished at its newest checkpoint (`--resume --steps N`: EMA weights and final eval written),
# then packed for the device tool: $OUT/runs.tar.part-* (15 MB pieces; `cat` them and untar here).
#   OUT=... BUDGET=400 bash scripts/gpu_train.sh configs/gpu/muse-128-gpu.json configs/gpu/eq64-*.json
# Each run folder comes back without checkpoints, its EMA transformer stored in fp16. On a bare
# GPU machine, .whl/ and .gpu/site (scripts/gpu_prepare.sh: the wheels it lacks, the compact text
# encoder) are installed and put on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-outputs/gpu-train}
BUDGET=${BUDGET:-400}
mkdir -p "$OUT" runs/gpu
PY=python3 SITE=".gpu/site:/tmp/site:"  # a bare GPU machine: carried wheels and .gpu/site
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python SITE=""
elif compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
if [ -n "$SITE" ] && [ -d .gpu/site ]; then python3 scripts/gpu_text_encoder.py unpack; fi
export PYTHONPATH="src:$SITE${PYTHONPATH:-}" PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
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
"$PY" - "${names[@]}" <<'PY'
import hashlib, json, sys
from pathlib import Path
from safetensors.torch import load_file, save_file
for name in sys.argv[1:]:  # EMA weights to fp16 (the transfer's size), the manifest to match
    folder = Path("runs/gpu") / name / "transformer"
    f, manifest = folder / "model.safetensors", folder / "manifest.json"
    if f.is_file():
        save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(f).items()}, f)
        m = json.loads(manifest.read_text())
        m["files"][f.name] = {"bytes": f.stat().st_size, "sha256": hashlib.sha256(f.read_bytes()).hexdigest()}
        manifest.write_text(json.dumps(m, indent=2) + "\n")
PY
tar -czf - --exclude=checkpoints -C runs gpu | split -b 15M -d - "$OUT/runs.tar.part-"
ls -la "$OUT"
