"""Why shapes-suite images fail: each image's outcome by category, read from its pixels.

    python benchmarks/shapes_failures.py muse-128 [runs/muse-128-v6 ...] [--seeds 4]
        [--world 90001 12345] [--categories position counting] [--set steps=24] [--out F.md]

A model is a bundled name or folder, or a training run (its final EMA weights). Outcomes:
  single / colour      pass, nothing found, wrong shape only, right shape in a wrong colour
  two_objects          pass, one shape missing, both missing
  colour_attribution   pass, colours swapped (both shapes, each in the other's colour),
                       one or both (shape, colour) pairs missing otherwise
  counting             found minus asked (-3 .. +3) of the (shape, colour)
  position             pass, an object missing, relation reversed (the opposite one holds),
                       other axis (both found, neither the relation nor its opposite)
So "position 0.33" splits into objects not drawn and objects drawn in the wrong place, and
counting into too few and too many.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from pathlib import Path

from shapes_runs import parse_set, run_pipeline

from fastmuse.eval.shapes_check import Found, Spec, detect, relation_holds
from fastmuse.eval.shapes_suite import CATEGORIES, EVAL_WORLD
from fastmuse.eval.suite import EvalSettings, shapes_accuracy
from fastmuse.fsutil import atomic_write_text
from fastmuse.pipeline import Pipeline

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def outcome(found: list[Found], spec: Spec) -> str:
    """One label for what an image shows against what its prompt asked."""
    def having(shape: str, colour: str | None = None) -> list[Found]:
        return [f for f in found if f.shape == shape and (colour is None or f.color == colour)]

    (s0, c0), *rest = spec.objects
    cat = spec.category
    if cat in ("single", "colour"):
        if having(s0, c0 if cat == "colour" else None):
            return "pass"
        return "wrong colour" if having(s0) else "wrong shape" if found else "nothing"
    if cat == "counting":
        return f"{max(-3, min(3, len(having(s0, c0)) - spec.count)):+d}"
    s1, c1 = rest[0]
    if cat == "two_objects":
        return ["both missing", "one missing", "pass"][bool(having(s0)) + bool(having(s1))]
    a, b = having(s0, c0), having(s1, c1)
    if cat == "colour_attribution":
        if a and b:
            return "pass"
        return "colours swapped" if having(s0, c1) and having(s1, c0) else "pair missing"
    if not (a and b):
        return "object missing"
    if any(relation_holds(x, spec.relation, y) for x in a for y in b):
        return "pass"
    return "reversed" if any(relation_holds(x, OPPOSITE[spec.relation], y) for x in a for y in b) \
        else "other axis"


def load(model: str) -> tuple[str, Pipeline]:
    path = Path(model)
    if (path / "config.json").is_file() and (path / "transformer").is_dir():
        return path.name, run_pipeline(path)[0]
    return model, Pipeline.from_pretrained(model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="bundled names, model folders or training runs")
    ap.add_argument("--seeds", type=int, default=4, help="images per prompt (default 4)")
    ap.add_argument("--world", nargs="+", type=int, default=[EVAL_WORLD],
                    help=f"shapes world seeds of the prompts (default {EVAL_WORLD}: shapes-v1)")
    ap.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                    help="sampler defaults to override, as in shapes_runs.py")
    ap.add_argument("--categories", nargs="+", default=list(CATEGORIES), choices=CATEGORIES,
                    help="only these categories of the suite (default: all)")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    a = ap.parse_args()
    overrides = parse_set(a.set)
    lines = ["| model | world | sampler | category | images | outcomes (share of the category's images) |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for model in a.models:
        name, pipe = load(model)
        pipe.defaults = dataclasses.replace(pipe.defaults, **overrides)
        for world in a.world:
            settings = EvalSettings(seeds=a.seeds)
            acc, images, items = shapes_accuracy(pipe, settings, tuple(a.categories), world)
            by_cat: dict[str, Counter] = {c: Counter() for c in a.categories}
            for k, im in enumerate(images):
                spec = items[k // a.seeds].spec
                by_cat[spec.category][outcome(detect(im), spec)] += 1
            lines.append(f"| {name} | {world} | {' '.join(a.set) or 'default'} | overall | {len(images)} "
                         f"| pass {acc['overall']:.3f} (mean of the categories) |")
            print(lines[-1], flush=True)
            for cat, counts in by_cat.items():
                n = sum(counts.values())
                cells = ", ".join(f"{label} {c / n:.2f}" for label, c in counts.most_common())
                lines.append(f"| {name} | {world} | {' '.join(a.set) or 'default'} | {cat} | {n} | {cells} |")
                print(lines[-1], flush=True)
    if a.out:  # the rows were printed as they came
        atomic_write_text(a.out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
