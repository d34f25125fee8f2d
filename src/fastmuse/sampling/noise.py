"""The samplers' and trainers' random draws: every draw comes from a `torch.Generator` on the
CPU, so a seed gives the same draws on every CPU and every batching of requests. On a GPU the
draws are made there, from a GPU generator seeded by one draw of each CPU stream: copying
vocabulary-sized noise (batch x tokens x codes per step) from the CPU would cost more than the
model at batch 16 (benchmarks/gpu_check.py, docs/speed.md). Per seed and per row they are the
same on every GPU, not equal to the CPU's."""

from __future__ import annotations

import torch

# One random stream, or one per consecutive group of rows: (generator, rows). The server
# batches requests this way, so a request's images do not depend on what it was batched with.
Generators = torch.Generator | list[tuple[torch.Generator, int]] | None


def _on(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A stream on `device` seeded by one draw of the CPU `generator` (None: the global one)."""
    if generator is None:
        return None
    return torch.Generator(device).manual_seed(int(torch.randint(1 << 62, (), generator=generator)))


def random(shape: torch.Size | tuple[int, ...], generator: Generators, device: torch.device | str = "cpu",
           normal: bool = False) -> torch.Tensor:
    """Uniform [0, 1) (or standard normal) fp32 noise; with per-row generators, each group of
    rows draws from its own stream. Drawn on the CPU where the generators live, then moved,
    except on a GPU (see the module docstring)."""
    draw = torch.randn if normal else torch.rand
    device = torch.device(device)
    on_gpu = device.type == "cuda"
    groups = generator if isinstance(generator, list) else [(generator, shape[0])]
    parts = [draw((rows, *shape[1:]), generator=_on(g, device) if on_gpu else g, dtype=torch.float32,
                  device=device if on_gpu else "cpu") for g, rows in groups]
    return (parts[0] if len(parts) == 1 else torch.cat(parts)).to(device)  # one group: no copy


def gumbel(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    u = random(shape, generator, device)
    return -torch.log((-torch.log(u.clamp(1e-20, 1.0))).clamp(min=1e-20))
