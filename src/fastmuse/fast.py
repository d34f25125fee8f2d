"""Fast inference modes: the precision a Pipeline computes in, and torch.compile.

    fp32  the reference.
    bf16  torch.autocast over the text projection, the transformer and the VQ decoder; logits,
          softmax and sampling stay fp32 (the samplers cast logits with .float()). Fast on GPUs
          and AVX-512-BF16 CPUs; on AVX2-only CPUs torch's bf16 matmul is 7-170x slower than
          fp32 (benchmarks/bf16_matmul.py), so there it is slower, not faster.
    int8  every nn.Linear of the transformer becomes a dynamically quantized int8 Linear: int8
          weights (one scale per output channel), activations quantized per call, int32
          accumulation. CPU only. PyTorch's own x86 (fbgemm/oneDNN) kernels: 2.1x fp32 on a
          2-thread AVX2 EPYC, where torchao 0.18's eager int8 dynamic path ran at 0.04x fp32
          (it goes through torch._int_mm) and its weight-only int8 at 1.0x (dequantize, then
          fp32 matmul). Embeddings, norms, convolutions and attention stay fp32.

Classifier-free guidance limited to part of the steps is a sampler option
(`guidance_interval`, sampling/maskgit.py); text keys/values once per prompt (exact) and
guidance batched into one forward (equal up to fp32 rounding) are always on.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
from torch import nn

from .errors import ConfigError

PRECISIONS = ("fp32", "bf16", "int8")
# The documented cost of each precision: the largest relative L2 error ||l - l_fp32|| / ||l_fp32||
# of the transformer's logits that tests/test_fast.py accepts. What it does to sampled images is
# measured by `fastmuse bench` (token agreement, PSNR) and the evaluation suite (FD, shapes).
TOLERANCE = {"bf16": 0.02, "int8": 0.05}


def check_precision(precision: str, device: torch.device | str = "cpu") -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision is {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if precision == "int8" and torch.device(device).type != "cpu":
        raise ConfigError("precision 'int8' runs on CPU only (PyTorch's x86 int8 kernels); "
                          "on a GPU use 'bf16'")
    return precision


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear dynamically quantized to int8 (per-channel weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated (no CPU successor yet)
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8).eval()


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
