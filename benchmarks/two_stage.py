"""Single-stage vs two-stage generation at the same output size, side by side in one run.

    python benchmarks/two_stage.py                      # muse-128 vs muse-64 -> muse-sr-128
    python benchmarks/two_stage.py --seeds 1 --json outputs/bench/two-stage.json

Per pipeline: network evaluations and tokens per image, seconds per image (batch of 4, best of
--repeats after a warm-up), the evaluation suite's shapes accuracy and emoji FD / KID
(eval/suite.py, --seeds images per prompt) and the base stage's share of the time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fastmuse.eval.speed import suite_quality, timed
from fastmuse.pipeline import Pipeline

PIPELINES = {"single stage": ["muse-128"], "two stages": ["muse-64", "muse-sr-128"]}


def forward_cost(pipe: Pipeline) -> tuple[int, int]:
    """(network evaluations, token positions processed) per image over all stages."""
    nfe = tokens = 0
    for p in [pipe, *pipe.upsamplers]:
        d = p.defaults
        n = p.network_evaluations(d.steps, d.guidance)
        nfe += n
        tokens += n * p.transformer.config.grid ** 2
    return nfe, tokens


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=2,
                    help="images per prompt for the quality suites (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per pipeline (default 2)")
    ap.add_argument("--no-quality", action="store_true", help="time only")
    ap.add_argument("--json", default=None, help="also write the rows here")
    a = ap.parse_args(argv)
    rows = []
    for label, names in PIPELINES.items():
        pipe = Pipeline.from_stages(names)
        seconds = timed(lambda p=pipe: p("red heart", n=4, seed=0), a.repeats) / 4
        base = Pipeline.from_pretrained(names[0])
        base_tokens = timed(lambda b=base: b.generate_tokens("red heart", n=4, seed=0), a.repeats) / 4
        nfe, tokens = forward_cost(pipe)
        row = {"pipeline": label, "stages": " -> ".join(names), "resolution": pipe.resolution,
               "steps": "+".join(str(p.defaults.steps) for p in [pipe, *pipe.upsamplers]),
               "network_evaluations": nfe, "token_positions": tokens, "seconds_per_image": round(seconds, 3),
               "base_share": round(base_tokens / seconds, 3) if len(names) > 1 else 1.0}
        if not a.no_quality:
            row |= suite_quality(pipe, a.seeds, None, None)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    ref = rows[0]["seconds_per_image"]
    print(f"threads {torch.get_num_threads()}, batch 4, quality over {a.seeds} seed(s) per prompt\n")
    print("| pipeline | stages | px | steps | NFE | token positions | s/img | speed-up | base share "
          "| shapes overall | emoji FD | KID |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        q = [f"{r[k]}" if k in r else "" for k in ("shapes_overall", "fd", "kid")]
        print(f"| {r['pipeline']} | {r['stages']} | {r['resolution']} | {r['steps']} | "
              f"{r['network_evaluations']} | {r['token_positions']} | {r['seconds_per_image']:.3f} | "
              f"{ref / r['seconds_per_image']:.2f}x | {r['base_share']:.2f} | {' | '.join(q)} |")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
