#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py says what it measures): one command, under 8 minutes on
# one GPU, writing gpu_check.json and bundled.png to $OUT (the device tool's folder) or
# outputs/gpu-check. Where the Python there lacks packages (diffusers, fastapi, uvicorn,
# webdataset), put their wheels in .whl/ and carry it: they are installed first.
#   bash benchmarks/gpu_check.sh                      # on the GPU machine
#   bash benchmarks/gpu_check.sh --device cpu --smoke # here: the same code at toy sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else  # a bare GPU machine: carried wheels and .gpu/site (scripts/gpu_prepare.sh)
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    if [ -d .gpu/site ]; then python3 scripts/gpu_text_encoder.py unpack; fi
    export PYTHONPATH=".gpu/site:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec timeout 470 "$PY" benchmarks/gpu_check.py --out "${OUT:-outputs/gpu-check}" "$@"
