#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it measures): one command, under 8 minutes on
# one GPU, writing gpu_check.json and bundled.png to $OUT (the device tool's folder) or
# outputs/gpu-check. Where the Python there lacks packages (diffusers, fastapi, uvicorn,
# webdataset), put their wheels in .whl/ and carry it: they are installed first.
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --smoke # here: the same code at toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/gpu_env.sh
exec timeout 470 "$PY" benchmarks/gpu_check.py --out "${OUT:-outputs/gpu-check}" "$@"
