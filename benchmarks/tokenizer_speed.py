"""Tokenizer encode + decode throughput on CPU, side by side for several batch sizes.

    .venv/bin/python benchmarks/tokenizer_speed.py [--model tokenizer-f8] [--resolution 128]

Prints images/s for encode, decode and the round trip, decode again with channels-last
weights and activations (what Pipeline uses), the CPU flags that matter for the ratios
(avx2 / avx512_bf16 / amx), and the thread count. Absolute numbers vary between
machines and runs; compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch

from fastmuse.eval.machine import cpu_flags
from fastmuse.eval.speed import timed
from fastmuse.tokenizer import VQTokenizer


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tokenizer-f8")
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    model = VQTokenizer.from_pretrained(a.model).eval()
    last = VQTokenizer.from_pretrained(a.model).eval().to(memory_format=torch.channels_last)
    rows = []
    for b in (int(x) for x in a.batch_sizes.split(",")):
        x = torch.rand(b, 3, a.resolution, a.resolution) * 2 - 1
        tokens = model.encode(x)
        enc = timed(lambda x=x: model.encode(x), a.repeats)
        dec = timed(lambda t=tokens: model.decode(t), a.repeats)
        dec_last = timed(lambda t=tokens: last.decode(t), a.repeats)
        rows.append({"batch": b, "encode_img_s": b / enc, "decode_img_s": b / dec,
                     "roundtrip_img_s": b / (enc + dec), "decode_channels_last_img_s": b / dec_last})
    print(json.dumps({"model": a.model, "resolution": a.resolution, "threads": torch.get_num_threads(),
                      "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
                      "torch": torch.__version__}))
    print(f"{'batch':>5} {'encode img/s':>13} {'decode img/s':>13} {'round trip img/s':>17} "
          f"{'decode channels-last img/s':>27}")
    for r in rows:
        print(f"{r['batch']:>5} {r['encode_img_s']:>13.1f} {r['decode_img_s']:>13.1f} "
              f"{r['roundtrip_img_s']:>17.1f} {r['decode_channels_last_img_s']:>27.1f}")


if __name__ == "__main__":
    main()
