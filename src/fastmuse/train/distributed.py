"""The Accelerator every trainer uses (single process, DDP on GPUs, or DDP on CPUs)."""

from __future__ import annotations

import os


def make_accelerator(mixed_precision: str = "no", grad_accum: int = 1):
    """Accelerate picks the backend; without CUDA a multi-process launch (torchrun,
    `accelerate launch`) only becomes DDP with gloo when told it runs on CPU."""
    import torch
    from accelerate import Accelerator

    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                       cpu=multi and not torch.cuda.is_available())
