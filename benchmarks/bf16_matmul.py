"""bf16 against fp32 matmul on this CPU, at the DiT's and the masked transformer's shapes, with the
left operand row-major and column-major (a transposed view), and as F.linear (x @ W.T: what a
Linear layer's forward runs; its backward runs the plain products).

On AVX2 without AVX512-BF16, torch 2.13's CPU wheel runs a bf16 matmul with a row-major left
operand about 100x slower than fp32: that is why bf16 autocast training was 36x slower here.
Ratios are measured side by side in one run; absolute times vary on this machine.

    .venv/bin/python benchmarks/bf16_matmul.py
"""

from __future__ import annotations

import time

import torch

SHAPES = [(2048, 256, 1024), (2048, 1024, 256), (512, 256, 256)]  # (rows, in, out): batch x tokens


def best_ms(f, repeat: int = 3) -> float:
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def main() -> None:
    flags = torch.backends.cpu.get_cpu_capability()
    print(f"torch {torch.__version__}, CPU capability {flags}, {torch.get_num_threads()} threads\n")
    print("| rows x in @ in x out | fp32 ms | bf16 row-major ms | bf16 column-major ms | bf16 F.linear ms | "
          "bf16 / fp32: row, column, linear |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for n, k, m in SHAPES:
        a, b = torch.randn(n, k, generator=gen), torch.randn(k, m, generator=gen)
        fp32 = best_ms(lambda a=a, b=b: a @ b)
        a16, b16 = a.bfloat16(), b.bfloat16()
        col = a16.t().contiguous().t()  # same values, column-major
        row_ms = best_ms(lambda a=a16, b=b16: a @ b)
        col_ms = best_ms(lambda a=col, b=b16: a @ b)
        w16 = b16.t().contiguous()  # a Linear weight [out, in]: forward is x @ W.T
        lin_ms = best_ms(lambda a=a16, w=w16: torch.nn.functional.linear(a, w))
        print(f"| {n}x{k} @ {k}x{m} | {fp32:.1f} | {row_ms:.1f} | {col_ms:.1f} | {lin_ms:.1f} | "
              f"{row_ms / fp32:.0f}x, {col_ms / fp32:.1f}x, {lin_ms / fp32:.1f}x |")


if __name__ == "__main__":
    main()
