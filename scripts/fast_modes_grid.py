"""The README's fast-modes grid: the same prompts and seed in each fast mode of the bundled model.

    .venv/bin/python scripts/fast_modes_grid.py -o docs/fast-modes.png

One row per mode (fp32, int8, int8 with guidance on the first half of the steps, bf16), one
column per prompt; the seconds each row took are in its captions.
"""

from __future__ import annotations

import argparse
import time

from fastmuse.data.images import make_grid
from fastmuse.eval.speed import MODES
from fastmuse.pipeline import Pipeline

PROMPTS = ["red heart", "smiling face with sunglasses", "pizza", "a blue circle", "two yellow stars"]
ROWS = ["fp32", "int8", "int8-cfg-half", "bf16"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="muse-128")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="docs/fast-modes.png")
    a = p.parse_args()
    base = Pipeline.from_pretrained(a.model)
    images, captions = [], []
    for name in ROWS:
        pipe = MODES[name].pipeline(base)
        pipe(PROMPTS[:1], seed=a.seed)  # warm-up
        t0 = time.perf_counter()
        row = pipe(PROMPTS, seed=a.seed)
        took = time.perf_counter() - t0
        images += row
        captions += [f"{name} {took:.1f}s" if i == 0 else prompt for i, prompt in enumerate(PROMPTS)]
        print(f"{name}: {took:.2f} s for {len(PROMPTS)} images")
    make_grid(images, ncols=len(PROMPTS), captions=captions).save(a.output)
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
