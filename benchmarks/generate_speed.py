"""Text-to-image latency of a model on this machine, and what bounds it.

    cd benchmarks && ../.venv/bin/python generate_speed.py [--model muse-128] [--n 4] [--repeats 3]

Times `n` images of one prompt end to end at the model's default steps/guidance and
split into text encoding, MaskGIT decoding (the transformer) and VQ decoding; then
counts the FLOPs of one image (torch's FlopCounterMode: every matmul, attention included)
and measures this machine's fp32 matmul peak at the model's shapes, so the printed
"bound" is the time those FLOPs take at that peak. Rows of one run compare; absolute
numbers vary between machines and runs.
"""

from __future__ import annotations

import argparse
import json

import torch
from tokenizer_speed import cpu_flags, timed  # noqa: I001 - sibling script
from torch.utils.flop_counter import FlopCounterMode

from fastmuse.pipeline import Pipeline


def matmul_peak(rows: int, dim: int, repeats: int = 5) -> float:
    """fp32 GFLOP/s of [rows, dim] @ [dim, 4 dim], the MLP shape of the model."""
    a, b = torch.randn(rows, dim), torch.randn(dim, 4 * dim)
    return 2 * rows * dim * 4 * dim / timed(lambda: a @ b, repeats) / 1e9


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="muse-128")
    ap.add_argument("--n", type=int, default=4, help="images per timed call")
    ap.add_argument("--prompt", default="red heart")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    torch.manual_seed(0)
    pipe = Pipeline.from_pretrained(a.model)
    d = pipe.defaults
    m, g = pipe.transformer, pipe.transformer.config.grid
    text = pipe.text_encoder
    rows = []
    for steps, guidance in ((d.steps, d.guidance), (d.steps, 0.0), (max(1, d.steps // 2), d.guidance)):
        kw = {"n": a.n, "steps": steps, "guidance": guidance}
        t_all = timed(lambda kw=kw: pipe(a.prompt, **kw), a.repeats)
        t_tok = timed(lambda kw=kw: pipe.generate_tokens(a.prompt, **kw), a.repeats)
        rows.append({"steps": steps, "guidance": guidance, "seconds": round(t_all, 3),
                     "transformer_s": round(t_tok, 3), "images_per_s": round(a.n / t_all, 2)})
    tokens = pipe.generate_tokens(a.prompt, n=a.n)
    t_dec = timed(lambda: pipe.tokenizer.decode(tokens), a.repeats)
    t_text = timed(lambda: text.encode([a.prompt]), a.repeats)
    ctx = m.prepare_text(text.encode([a.prompt, ""]))
    fwd = flops(lambda: m(torch.full((2, g, g), m.mask_id), ctx)) / 2  # per image-row
    dec = flops(lambda: pipe.tokenizer.decode(tokens[:1]))
    rows_per_image = 2 if d.guidance > 0 else 1
    per_image = fwd * rows_per_image * d.steps + dec
    peak = matmul_peak(a.n * rows_per_image * g * g, m.config.dim)
    bound = a.n * per_image / (peak * 1e9)
    report = {
        "model": a.model, "n": a.n, "resolution": pipe.resolution, "threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(), "runs": rows, "text_encode_s": round(t_text, 3),
        "vq_decode_s": round(t_dec, 3),
        "gflop_per_image": round(per_image / 1e9, 2), "gflop_transformer_forward": round(fwd / 1e9, 3),
        "gflop_vq_decode": round(dec / 1e9, 2), "matmul_peak_gflops": round(peak, 1),
        "bound_s_at_peak": round(bound, 3),
        "achieved_gflops": round(a.n * per_image / rows[0]["seconds"] / 1e9, 1),
    }
    print(json.dumps(report, indent=2))
    print(f"\n{a.n} images at {pipe.resolution}px, {d.steps} steps, guidance {d.guidance}: "
          f"{rows[0]['seconds']:.2f} s; FLOPs alone need {bound:.2f} s at the measured {peak:.0f} GFLOP/s "
          f"matmul peak ({report['gflop_per_image']} GFLOP/image)")


if __name__ == "__main__":
    main()
