"""Shapes-suite accuracy of training runs side by side: the ablation table's numbers.

    python benchmarks/shapes_runs.py runs/shapes64-f8 runs/shapes64-v2 [--seeds 4]
        [--order confidence halton] [--world 90001 12345] [--out table.md] [--curves curves.png]

Each run's final EMA weights (RUN/transformer) are sampled with the run's own tokenizer, text
encoder and sampler (sample_steps, _guidance, _temperature, _guidance_interval), on every
category of the suite (shapes-v1's prompts, or the same categories drawn from another shapes
world with --world), once per MaskGIT order. One markdown row per (run, world, order).
--curves also draws each run's learning curve of shapes accuracy (the `shapes_overall` its
training logged, eval_shapes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from fastmuse.eval.shapes_suite import CATEGORIES, EVAL_WORLD
from fastmuse.eval.suite import EvalSettings, shapes_accuracy
from fastmuse.fsutil import atomic_write_text
from fastmuse.models import load_transformer
from fastmuse.pipeline import Pipeline
from fastmuse.text import load_text_encoder
from fastmuse.tokenizer import VQTokenizer
from fastmuse.train.masked import TransformerTrainConfig
from fastmuse.train.plot import plot_curves


def run_pipeline(run: Path) -> tuple[Pipeline, TransformerTrainConfig]:
    cfg = TransformerTrainConfig.load(run / "config.json")
    pipe = Pipeline(load_transformer(run / "transformer"), VQTokenizer.from_pretrained(cfg.tokenizer),
                    load_text_encoder(cfg.text_encoder), cfg.sampler())
    return pipe, cfg


def parse_set(items: list[str]) -> dict:
    """--set NAME=VALUE items -> sampler overrides: ints, floats, words (order=halton), or
    comma-separated lists of numbers."""
    def value(x: str) -> int | float | str:
        try:
            return int(x) if x.lstrip("-").isdigit() else float(x)
        except ValueError:
            return x
    return {k: [value(x) for x in v.split(",")] if "," in v else value(v)
            for k, v in (item.split("=", 1) for item in items)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, default=4, help="images per prompt (default 4)")
    ap.add_argument("--steps", type=int, default=None,
                    help="masked models: decoding steps (default: the run's sample_steps)")
    ap.add_argument("--order", nargs="+", default=["confidence"], choices=["confidence", "halton"])
    ap.add_argument("--world", nargs="+", type=int, default=[EVAL_WORLD],
                    help=f"shapes world seeds to draw the prompts from (default {EVAL_WORLD}: shapes-v1)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="sampler defaults to override, e.g. steps=24 noise=0 guidance_interval=0,0.5 "
                         "(comma-separated for lists)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    ap.add_argument("--curves", default=None, help="write the runs' logged shapes accuracy curves here")
    a = ap.parse_args()
    if a.curves:
        records = [{"step": r["step"], f"{run.name} {k}": r[k]} for run in a.runs
                   for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                   for k in ("shapes_overall",) if k in r]
        keys = [f"{run.name} shapes_overall" for run in a.runs]
        plot_curves(records, keys, title="shapes accuracy (logged during training) by step").save(a.curves)
    overrides = parse_set(a.set)
    head = ["run", "tokenizer", "world", "order", "steps", "sampler", "overall", *CATEGORIES, "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for run in a.runs:
        pipe, cfg = run_pipeline(run)
        pipe.defaults = dataclasses.replace(pipe.defaults, **overrides)
        for world in a.world:
            for order in a.order:
                pipe.defaults.order = order
                t0 = time.perf_counter()
                acc, _, _ = shapes_accuracy(pipe, EvalSettings(seeds=a.seeds, steps=a.steps), world=world)
                steps = a.steps or pipe.defaults.steps
                cells = [run.name, cfg.tokenizer, world, order, steps, " ".join(a.set) or "default",
                         f"{acc['overall']:.3f}",
                         *(f"{acc[c]:.3f}" for c in CATEGORIES), f"{time.perf_counter() - t0:.0f}"]
                lines.append("| " + " | ".join(map(str, cells)) + " |")
                print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        atomic_write_text(a.out, table)


if __name__ == "__main__":
    main()
