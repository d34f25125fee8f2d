"""Rotary position embedding over several position axes (FLUX's `FluxPosEmbed`; axial 2D
RoPE for image grids): each axis turns its own share of a head's channel pairs, so attention
scores depend on relative offsets along every axis."""

from __future__ import annotations

import torch


def rope_angles(ids: torch.Tensor, axes_dims: tuple[int, ...], theta: float = 10000.0) -> torch.Tensor:
    """ids [S, n_axes] -> angles [S, sum(axes_dims) / 2] (float64): for axis a of width d,
    pair i turns by ids[:, a] * theta^(-2i / d)."""
    parts = []
    for a, d in enumerate(axes_dims):
        inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64, device=ids.device) / d)
        parts.append(ids[:, a, None].double() * inv)
    return torch.cat(parts, dim=-1)


def rope_table(ids: torch.Tensor, axes_dims: tuple[int, ...], theta: float = 10000.0) -> torch.Tensor:
    """ids [S, n_axes] -> [2, S, head_dim / 2] float32: cos, sin of `rope_angles`."""
    angles = rope_angles(ids, axes_dims, theta)
    return torch.stack([angles.cos(), angles.sin()]).float()


def grid_ids(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Position ids [h*w, 3] of an h x w grid in raster order: (0, row, column)."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the consecutive pairs (x[2i], x[2i+1]) of x [..., S, head_dim] by the angles whose
    cos/sin are cos[..., S, i] / sin[..., S, i] (broadcast over the leading axes); in float32."""
    even, odd = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)
