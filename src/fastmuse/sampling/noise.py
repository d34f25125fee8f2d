"""The samplers' and trainers' random draws: every draw comes from a `torch.Generator` on the
CPU, so a seed gives the same numbers on every device and every batching of requests."""

from __future__ import annotations

import torch

# One random stream, or one per consecutive group of rows: (generator, rows). The server
# batches requests this way, so a request's images do not depend on what it was batched with.
Generators = torch.Generator | list[tuple[torch.Generator, int]] | None


def random(shape: torch.Size | tuple[int, ...], generator: Generators, device: torch.device | str = "cpu",
           normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) fp32 noise; with per-row generators, each group of
    rows draws from its own stream. Drawn on the CPU (where the generators live), then moved:
    a seed gives the same draws on every device."""
    draw = torch.randn if normal else torch.rand
    if isinstance(generator, list):
        return torch.cat([draw((rows, *shape[1:]), generator=g, dtype=torch.float32, device="cpu")
                          for g, rows in generator]).to(device)
    return draw(shape, generator=generator, dtype=torch.float32, device="cpu").to(device)


def gumbel(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    u = random(shape, generator, device)
    return -torch.log((-torch.log(u.clamp(1e-20, 1.0))).clamp(min=1e-20))
