"""Time one model's default sampler against other settings of it, side by side in one run.

    python benchmarks/sampler_speed.py muse-128 --set steps=24 refine=0 --n 4 --repeats 3

Each setting (the model's defaults first, then one per --set, which may be repeated) makes the
same `--n` images per call at the default precision; the calls alternate between settings
`--repeats` times and the fastest of each is kept (this machine is noisy), then the ratio to
the defaults is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch
from shapes_runs import parse_set

from fastmuse.pipeline import Pipeline

PROMPTS = ["red heart", "a blue circle", "two yellow stars", "a red square left of a green triangle"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="bundled name or model folder")
    ap.add_argument("--set", nargs="+", action="append", default=[], metavar="NAME=VALUE",
                    help="a sampler setting to time against the defaults (repeat --set for more)")
    ap.add_argument("--n", type=int, default=4, help="images per call (default 4)")
    ap.add_argument("--repeats", type=int, default=3, help="calls per setting (default 3)")
    a = ap.parse_args()
    pipe = Pipeline.from_pretrained(a.model)
    base = pipe.defaults
    settings = {"defaults": base} | {" ".join(s): dataclasses.replace(base, **parse_set(s)) for s in a.set}
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.n)]
    best = {name: float("inf") for name in settings}
    pipe.generate_tokens(prompts[:1], seed=0)  # warm-up
    for _ in range(a.repeats):
        for name, d in settings.items():
            pipe.defaults = d
            start = time.perf_counter()
            with torch.inference_mode():
                pipe(prompts, seed=0)
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{a.model}, {a.n} images per call, fastest of {a.repeats}, {torch.get_num_threads()} threads")
    print("| setting | network evaluations | s per call | vs defaults |\n|---|---|---|---|")
    for name, d in settings.items():
        pipe.defaults = d
        nfe = pipe.network_evaluations(d.steps, d.guidance)
        print(f"| {name} | {nfe} | {best[name]:.2f} | {best[name] / best['defaults']:.2f}x |")


if __name__ == "__main__":
    main()
