# Sourced by benchmarks/gpu_check.sh and scripts/gpu_train.sh: sets PY, the Python to run. Here,
# the project's .venv; on a bare GPU machine, its python3 with the carried wheels (.whl/) and the
# compact text encoder (.gpu/site, made whole first) on PYTHONPATH (scripts/gpu_prepare.sh).
PY=python3
if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    if compgen -G ".whl/*.whl" > /dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    fi
    if [ -d .gpu/site ]; then python3 scripts/gpu_text_encoder.py unpack; fi
    export PYTHONPATH=".gpu/site:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
