"""`fastmuse eval`: the evaluation suites and the results table; `fastmuse eval checker`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import DEFAULT_MODEL, add_device_arg, positive


def _steps_list(text: str) -> list[int | None]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = [0]
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"--steps must be comma-separated integers >= 1, got {text!r}")
    return values


def cmd_eval(a: argparse.Namespace) -> None:
    from ..eval.suite import EvalSettings, evaluate, table
    from ..fsutil import atomic_write_bytes
    from ..hub import resolve
    from ..models import ARTransformerConfig, transformer_kind
    from ..pipeline import SamplerDefaults

    results = []
    for model in a.model:
        # autoregressive models take one step per token, distilled students the steps they were
        # trained for (few-step ones also those of --student-steps they run): --steps is the teacher's
        defaults = SamplerDefaults.load(resolve(model))
        if defaults.sampler == "few_step":
            rows = [k for k in a.student_steps or [] if k in defaults.student_steps()] or [None]
        elif transformer_kind(model) == ARTransformerConfig.kind or defaults.sampler == "one_step":
            rows = [None]
        else:
            rows = a.steps or [None]
        for steps in rows:
            s = EvalSettings(seeds=a.seeds, steps=steps, guidance=a.guidance, device=a.device)
            # the whole path: students of different runs are all called "student"
            label = f"{str(model).strip('/').replace('/', '_')}-{steps or 'default'}steps"
            results.append(evaluate(model, a.suite, Path(a.out) / label, s))
    md = table(results)
    atomic_write_bytes(Path(a.out) / "results.md", md.encode())
    if a.table:
        atomic_write_bytes(Path(a.table), md.encode())
    print(md, end="")
    print(f"wrote {a.out}/results.md and {len(results)} results.json" + (f", {a.table}" if a.table else ""))


def cmd_checker(a: argparse.Namespace) -> None:
    from ..eval.shapes_suite import suite_items, validate_checker
    from ..fsutil import atomic_write_bytes

    items = suite_items(per_category=a.per_category)
    result = validate_checker(items)
    columns = list(next(iter(result.values())))
    lines = ["| ground truth | " + " | ".join(columns) + " |", "|" + "---|" * (1 + len(columns))]
    lines += [f"| {name} | " + " | ".join(f"{acc[c]:.3f}" for c in columns) + " |"
              for name, acc in result.items()]
    print("\n".join(lines))
    if a.output:
        atomic_write_bytes(Path(a.output), (json.dumps(result, indent=2) + "\n").encode())


def register(sub: argparse._SubParsersAction) -> None:
    from ..eval import SUITES

    p = sub.add_parser("eval", help="evaluation suites and the results table",
                       description="Evaluate models: shapes compositional accuracy (checked from "
                                   "pixels), emoji FID/KID and retrieval R@1 (TF Inception pool3), "
                                   "speed, and the VQ tokenizer's PSNR/SSIM/codebook usage. One row per "
                                   "(model, steps) in OUT/results.md.")
    p.add_argument("--model", nargs="+", default=[DEFAULT_MODEL], help="bundled names or folders")
    p.add_argument("--suite", nargs="+", default=list(SUITES),
                   help=f"any of {', '.join(SUITES)} (default: all)")
    p.add_argument("--steps", type=_steps_list, default=None,
                   help="e.g. 12,6: one row each for masked and diffusion teachers (default: the model's; "
                        "autoregressive models always take one step per token, one-step models 1)")
    p.add_argument("--student-steps", type=_steps_list, default=None,
                   help="e.g. 1,2: rows for few-step (DMD, sCM) students at these of the step counts each "
                        "one runs (default: each student's own)")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument("--seeds", type=positive("--seeds"), default=4, help="images per prompt (default 4)")
    add_device_arg(p)
    p.add_argument("--out", default="outputs/eval", help="results folder (default outputs/eval)")
    p.add_argument("--table", default=None, help="also write the markdown table here")
    p.set_defaults(func=cmd_eval)
    eval_sub = p.add_subparsers(dest="eval_command", metavar="TOOL")
    c = eval_sub.add_parser("checker", help="validate the shapes checker on ground-truth renders",
                            description="Checker accuracy on ground-truth renders of the suite's "
                                        "scenes, clean and under blur, noise, JPEG and downscaling.")
    c.add_argument("--per-category", type=positive("--per-category"), default=12,
                   help="scenes per category, at most 18 (default 12: the suite's own scenes)")
    c.add_argument("-o", "--output", default=None, help="write the accuracies as JSON")
    c.set_defaults(func=cmd_checker)
