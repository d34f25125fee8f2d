"""Warm start: begin a training run from a trained model's weights (`init_from`).

Every tensor whose name and shape match is copied; a model of another objective (a
diffusion transformer from a masked one) keeps its own initialisation where shapes differ
(the output head). Learned position embeddings of another grid are resampled (area-averaged
going down, linear going up): a 64 px model started from a 128 px one gets, for row i, the
mean of the 128 px rows 2i and 2i + 1, which cover the same part of the image. Whatever the
source lacks (micro-condition MLP, low-res embedding, a DiT's time MLP) keeps its fresh
initialisation, which the models make a no-op at the start. A model k times the source's
depth gets the source `deepen`ed first (each block followed by k - 1 copies that start as
identities), so it too begins exactly where the source was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

POSITION_TABLES = ("row_emb", "col_emb")  # [grid, dim] learned per row / column


def resample_rows(table: torch.Tensor, n: int) -> torch.Tensor:
    """[g, dim] -> [n, dim] along the grid axis."""
    mode = "area" if n < table.shape[0] else "linear"
    kwargs = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(table.T[None], size=n, mode=mode, **kwargs)[0].T


def warm_start(model: nn.Module, source: str) -> str:
    """Copy `source`'s matching weights into `model` in place; returns a one-line summary."""
    from ..models import load_transformer
    from ..models.transformer import deepen

    src_model = load_transformer(source)
    depth, src_depth = model.config.depth, src_model.config.depth
    deepened = depth != src_depth and depth % src_depth == 0
    if deepened:
        src_model = deepen(src_model, depth)
    # another family (a diffusion model from a masked one): its output head predicts something
    # else, so tensors of another shape keep their fresh initialisation instead of failing
    cross = src_model.config.objective != model.config.objective
    src = src_model.state_dict()
    own = model.state_dict()
    copied, resampled, kept = [], [], []
    for name, value in own.items():
        if name not in src:
            continue
        theirs = src[name]
        if theirs.shape == value.shape:
            copied.append(name)
        elif name in POSITION_TABLES and theirs.shape[1:] == value.shape[1:]:
            theirs = resample_rows(theirs, value.shape[0])
            resampled.append(name)
        elif cross:
            kept.append(name)
            continue
        else:
            raise ConfigError(f"init_from {source!r}: {name} has shape {tuple(theirs.shape)}, the model's is "
                              f"{tuple(value.shape)}; accepted: a model of the same dim, codebook and text "
                              "encoder, and the same depth or a multiple of it")
        own[name] = theirs.to(value.dtype)
    if not copied:
        raise ConfigError(f"init_from {source!r}: no weight matches the model's")
    model.load_state_dict(own)
    fresh = [n for n in own if n not in src] + kept
    return (f"warm start from {source}: {len(copied) + len(resampled)} tensors copied"
            + (f" (depth {src_depth} -> {depth}: copies of its blocks start as identities)"
               if deepened else "")
            + (f" ({', '.join(resampled)} resampled)" if resampled else "")
            + (f"; new: {', '.join(sorted({n.split('.')[0] for n in fresh}))}" if fresh else ""))
