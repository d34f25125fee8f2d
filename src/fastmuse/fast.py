"""Fast inference modes: the precision a Pipeline computes in, and torch.compile.

    auto  the CLI's default: bf16 on a GPU; on a CPU bf16 where it is faster than fp32 (measured
          once per machine by a Linear-layer probe, cached in ~/.cache/fastmuse/precision.json),
          else fp32. int8 stays opt-in: it changes the pictures more.
    fp32  the reference (the Python API's default: exact and the same on every machine).
    bf16  torch.autocast over the text projection, the transformer and the VQ decoder; logits,
          softmax and sampling stay fp32 (the samplers cast logits with .float()). Fast on GPUs
          and AVX-512-BF16 CPUs; on AVX2-only CPUs torch's bf16 matmul is 7-170x slower than
          fp32 (benchmarks/bf16_matmul.py), so there it is slower, not faster.
    int8  every nn.Linear of the transformer becomes a dynamically quantized int8 Linear: int8
          weights (one scale per output channel), activations quantized per call, int32
          accumulation. CPU only. PyTorch's own x86 (fbgemm/oneDNN) kernels: 2.1x fp32 on a
          2-thread AVX2 EPYC, where torchao 0.18's eager int8 dynamic path ran at 0.04x fp32
          (it goes through torch._int_mm) and its weight-only int8 at 1.0x (dequantize, then
          fp32 matmul). Embeddings, norms, convolutions and attention stay fp32 (int8.py;
          `fastmuse convert --precision int8` stores the int8 weights, which then load in 1 s).

Classifier-free guidance limited to part of the steps is a sampler option
(`guidance_interval`, sampling/maskgit.py); text keys/values once per prompt (exact) and
guidance batched into one forward (equal up to fp32 rounding) are always on.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .fsutil import atomic_write_text, cache_dir

PRECISIONS = ("auto", "fp32", "bf16", "int8")
# The documented cost of each precision: the largest relative L2 error ||l - l_fp32|| / ||l_fp32||
# of the transformer's logits that tests/test_fast.py accepts. What it does to sampled images is
# measured by `fastmuse bench` (token agreement, PSNR) and the evaluation suite (FD, shapes).
TOLERANCE = {"bf16": 0.02, "int8": 0.05}


def check_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The precision to compute in on `device`: `precision`, checked, with "auto" resolved."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision is {precision!r}; accepted: {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "int8" and kind != "cpu":
        raise ConfigError("precision 'int8' runs on CPU only (PyTorch's x86 int8 kernels); "
                          "on a GPU use 'bf16'")
    if precision == "auto":
        return "bf16" if kind == "cuda" else cpu_precision() if kind == "cpu" else "fp32"
    return precision


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" (a CUDA GPU if one is visible, else the CPU), "cpu", "cuda" or "cuda:N", checked."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device is {device!r}; accepted: cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise ConfigError(f"device is {device!r} but this machine has no CUDA GPU that torch can use "
                              f"(torch {torch.__version__}); accepted here: cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device is {device!r}; accepted: cuda:0 .. cuda:{count - 1} ({count} GPUs)")
    return dev


def machine_key() -> str:
    """What the bf16-vs-fp32 answer depends on: the CPU, torch's kernels, the thread count, and
    the probe's version (2: warm-up untimed; version 1 timed bf16's kernel build and picked fp32
    on AMX CPUs, so its answers are not reused)."""
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").open()
                      if line.startswith("model name")), "")
    return (f"{model or os.uname().machine} | {torch.backends.cpu.get_cpu_capability()} | "
            f"torch {torch.__version__} | {torch.get_num_threads()} threads | probe 2")


def probe_linear(rows: int = 1024, dim: int = 256, repeat: int = 3) -> tuple[float, float]:
    """Best-of-`repeat` ms of a [rows, dim] x [dim, 4 dim] Linear (the transformer's MLP shape) in
    fp32 and under bf16 autocast, each after an untimed warm-up call (bf16's first call builds
    its kernels: on an AMX CPU it alone took 5x the fp32 time). A bf16 call over 4x the fp32
    time ends the probe early."""
    x, w = torch.randn(rows, dim), torch.randn(4 * dim, dim)

    def best(cast: bool) -> float:
        times = []
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=cast):
            F.linear(x, w)  # warm-up
            for _ in range(repeat):
                t0 = time.perf_counter()
                F.linear(x, w)
                times.append(1000 * (time.perf_counter() - t0))
                if cast and times[0] > 4 * fp32:
                    return times[0]  # AVX2: 7-170x slower, no need to measure it well
        return min(times)

    fp32 = best(False)
    return fp32, best(True)


@functools.cache
def cpu_precision() -> str:
    """bf16 if a bf16 Linear runs clearly faster than fp32 on this CPU, else fp32: probed once
    per machine (about a second) and cached; the choice is printed when probed."""
    path, key = cache_dir() / "precision.json", machine_key()
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    known = known if isinstance(known, dict) else {}
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("precision") in ("fp32", "bf16"):
        return entry["precision"]
    fp32_ms, bf16_ms = probe_linear()
    choice = "bf16" if bf16_ms < 0.8 * fp32_ms else "fp32"
    known[key] = {"precision": choice, "fp32_ms": round(fp32_ms, 3), "bf16_ms": round(bf16_ms, 3)}
    with contextlib.suppress(OSError):  # a read-only home: probe again next time
        atomic_write_text(path, json.dumps(known, indent=2) + "\n")
    print(f"fastmuse: precision auto -> {choice} on this CPU (a Linear layer: bf16 {bf16_ms:.1f} ms, "
          f"fp32 {fp32_ms:.1f} ms; kept in {path}; choose with --precision)", file=sys.stderr)
    return choice


def autocast(precision: str, device: torch.device | str = "cpu") -> contextlib.AbstractContextManager:
    """The context the networks run in: bf16 autocast, or nothing."""
    if precision == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_forward(model: nn.Module) -> nn.Module:
    """torch.compile the model's forward in place (fixed shapes: the sampling loop's are). The
    first call per shape compiles (about 25 s for the bundled model on 2 CPU threads)."""
    model.forward = torch.compile(model.forward, dynamic=False)  # type: ignore[method-assign]
    return model


def inference(method):
    """For Pipeline's public methods: no autograd, and the networks run in the pipeline's precision."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with torch.no_grad(), autocast(self.precision, self.device):
            return method(self, *args, **kwargs)
    return run
