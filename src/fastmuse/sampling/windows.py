"""Token canvases larger than the model's grid, sampled in overlapping windows.

Outpainting past the model resolution and editing non-square images give a token canvas
[B, H, W] bigger than the g x g grid the transformer was trained on. We cover it with g x g
windows at stride g/2 and fill one window at a time, always the one with the most tokens
already known, so every window is generated in the context of what is decided around it.
A canvas that fits in one window is sampled exactly like plain generation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tqdm import tqdm

from .control import show_progress


def window_starts(size: int, window: int) -> list[int]:
    """Start offsets of `window`-long windows at stride window/2 covering [0, size)."""
    if size <= window:
        return [0]
    stride = max(1, window // 2)
    starts = list(range(0, size - window + 1, stride))
    return starts if starts[-1] == size - window else [*starts, size - window]


def windows(h: int, w: int, grid: int) -> list[tuple[slice, slice]]:
    """(rows, cols) slices of every window of a [h, w] canvas, row-major."""
    gh, gw = min(grid, h), min(grid, w)
    return [(slice(y, y + gh), slice(x, x + gw)) for y in window_starts(h, gh) for x in window_starts(w, gw)]


def fill_windows(sample: Callable[[torch.Tensor], torch.Tensor], tokens: torch.Tensor, mask_id: int,
                 grid: int, progress: bool = True) -> torch.Tensor:
    """Replace every `mask_id` in tokens [B, H, W] by sampling windows of at most grid x grid.

    sample(window [B, h, w] with MASK where unknown) -> the window completed. Windows are
    taken most-known first (ties: row-major), each filled completely, until no MASK is left.
    """
    x = tokens.clone()
    wins = windows(x.shape[1], x.shape[2], grid)
    todo = sum(bool((x[:, r, c] == mask_id).any()) for r, c in wins)
    quiet = not progress or todo <= 1 or not show_progress()
    with tqdm(total=todo, desc="windows", unit="win", disable=quiet, leave=False) as bar:
        while True:
            best, best_known = None, -1
            for r, c in wins:
                unknown = x[:, r, c] == mask_id
                if unknown.any() and int((~unknown).sum()) > best_known:
                    best, best_known = (r, c), int((~unknown).sum())
            if best is None:
                return x
            x[:, best[0], best[1]] = sample(x[:, best[0], best[1]])
            bar.update()
