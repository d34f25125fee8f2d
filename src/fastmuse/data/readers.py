"""Which slice of a stream this reader takes: DDP rank x DataLoader worker."""

from __future__ import annotations

import torch
from torch.utils.data import get_worker_info


def reader_slot() -> tuple[int, int]:
    """(slot, slots): reader `slot` of `slots` = rank * workers + worker id, so that every
    process and worker of a run reads a disjoint part of a stream."""
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank * workers + worker, world * workers
