"""Learning-rate schedule shared by the trainers: a pure function of the step."""

from __future__ import annotations

import math
from typing import Protocol


class _Schedule(Protocol):
    lr: float
    min_lr_ratio: float
    warmup_steps: int
    steps: int


def lr_at(step: int, cfg: _Schedule, base: float | None = None) -> float:
    """Linear warm-up, then cosine to base * min_lr_ratio (`base`: cfg.lr unless given, e.g. a
    second optimizer's rate on the same schedule)."""
    base = cfg.lr if base is None else base
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return base * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))
