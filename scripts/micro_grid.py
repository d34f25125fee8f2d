"""docs/micro-conditions.png: one micro-condition varied with the seed fixed, through the
two-stage pipeline (muse-64 -> muse-sr-128).

    python scripts/micro_grid.py [--out docs/micro-conditions.png] [--seed 0]

Top block: `score` (colourfulness) from 0 to 120, the other conditions at their defaults.
Bottom block: a centred zoom, `orig_size` Z with the window at ((Z - 64) / 2, (Z - 64) / 2).
One row per prompt, one column per value; every image uses the same seed.
"""

from __future__ import annotations

import argparse

from fastmuse.data.images import make_grid
from fastmuse.pipeline import Pipeline

PROMPTS = ("red heart", "pizza", "rocket", "two yellow stars")
SCORES = (0, 30, 60, 90, 120)
ZOOMS = (64, 80, 96, 112, 128)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/micro-conditions.png")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    pipe = Pipeline.from_stages(["muse-64", "muse-sr-128"])
    images, captions = [], []
    for prompt in PROMPTS:
        for s in SCORES:
            images += pipe(prompt, seed=a.seed, micro={"score": s})
            captions.append(f"{prompt[:12]}: score {s}")
    for prompt in PROMPTS:
        for z in ZOOMS:
            corner = (z - 64) / 2
            window = {"orig_size": z, "crop_top": corner, "crop_left": corner}
            images += pipe(prompt, seed=a.seed, micro=window)
            captions.append(f"{prompt[:12]}: size {z}")
    make_grid(images, ncols=len(SCORES), captions=captions).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
