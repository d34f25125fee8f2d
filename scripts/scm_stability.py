"""sCM training stability with and without each stabiliser, on the image task.

Runs `fastmuse distill scm` from one config several times for a few steps each (every step
logged): everything on, then tangent normalisation off, tangent warm-up off, adaptive weighting
off, and all three off. Writes RUN/<variant>/metrics.jsonl, a figure of the gradient norm
(before clipping) and the raw tangent norm ||cos(t) df/dt|| per step, and a markdown table.

    .venv/bin/python scripts/scm_stability.py --config configs/scm-128.json --steps 60 \
        --out runs/scm-stability --figure docs/scm-stability.png
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from PIL import Image

from fastmuse.distill.scm_train import SCMConfig, distill_scm
from fastmuse.train.plot import plot_curves

VARIANTS = {
    "all on": {},
    "no tangent norm": {"tangent_norm": 0.0},
    "no warm-up": {"tangent_warmup": 0},
    "no adaptive weight": {"adaptive_weight": False},
    "none": {"tangent_norm": 0.0, "tangent_warmup": 0, "adaptive_weight": False},
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="SCMConfig JSON (the variants change its switches)")
    p.add_argument("--steps", type=int, default=60, help="updates per variant")
    p.add_argument("--out", required=True, help="folder for the variants' runs")
    p.add_argument("--figure", default="docs/scm-stability.png")
    a = p.parse_args()
    base = SCMConfig.load(a.config)
    runs = {}
    for name, change in VARIANTS.items():
        run = Path(a.out) / name.replace(" ", "-")
        done = run / "checkpoints" / f"step-{a.steps:06d}"
        if not done.is_dir():  # a finished variant is read back, not rerun
            cfg = base.replace(**change, steps=a.steps, log_every=1, eval_every=a.steps, save_every=a.steps,
                               keep_checkpoints=1)
            distill_scm(cfg, run, stop_at=a.steps)
        runs[name] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]

    panels = []
    for key, title in (("grad_norm", "gradient norm before clipping"),
                       ("tangent_norm", "raw tangent norm ||cos(t) df/dt|| (batch mean)")):
        merged = [{"step": r["step"], name: r.get(key)} for name, recs in runs.items() for r in recs]
        panels.append(plot_curves(merged, list(runs), title=f"sCD, {title}", size=(720, 360)))
    fig = Image.new("RGB", (720, 720), "white")
    for i, panel in enumerate(panels):
        fig.paste(panel, (0, 360 * i))
    Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
    fig.save(a.figure)

    print("| variant | max grad norm | median grad norm | max tangent norm | skipped steps | last MSE |")
    print("|---|---|---|---|---|---|")
    for name, recs in runs.items():
        grads = sorted(r["grad_norm"] for r in recs if r.get("grad_norm") is not None)
        tangents = [r["tangent_max"] for r in recs if r.get("tangent_max") is not None]
        skipped = sum(r.get("skipped", 0) for r in recs)
        mse = recs[-1].get("loss_mse")
        mse = "-" if mse is None or not math.isfinite(mse) else f"{mse:.3g}"
        print(f"| {name} | {max(grads):.3g} | {grads[len(grads) // 2]:.3g} | {max(tangents):.3g} | "
              f"{skipped} | {mse} |")
    print(f"wrote {a.figure}")


if __name__ == "__main__":
    main()
