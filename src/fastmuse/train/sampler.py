"""A resumable, DDP-aware order over a map-style dataset.

The global sample order is a fresh permutation per epoch, seeded by (seed, epoch). Step s
takes positions [s*B*W, (s+1)*B*W) of that endless order and rank r takes its B of them,
so the batch at any step is a pure function of (seed, step): resuming at step s needs no
saved data state and every rank agrees.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    def __init__(self, n: int, batch_size: int, seed: int = 0, start_step: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        if n < 1:
            raise ValueError("StepBatchSampler needs a non-empty dataset")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.start_step, self.rank, self.world = start_step, rank, world

    def _perm(self, epoch: int) -> torch.Tensor:
        if getattr(self, "_cached", (None,))[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cached = (epoch, torch.randperm(self.n, generator=g, device="cpu"))
        return self._cached[1]

    def batch_at(self, step: int) -> list[int]:
        start = step * self.batch_size * self.world + self.rank * self.batch_size
        return [int(self._perm(pos // self.n)[pos % self.n])
                for pos in range(start, start + self.batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        step = self.start_step
        while True:
            yield self.batch_at(step)
            step += 1
