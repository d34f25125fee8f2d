"""Layers and config parts that several model files share: sinusoidal embeddings, adaptive
modulation, and the pieces of the public reference models (aMUSEd's U-ViT, Meissonic's MMDiT)
that both use under diffusers' parameter names."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..errors import ConfigError


def sinusoid(values: torch.Tensor, dim: int) -> torch.Tensor:
    """values [N] -> [N, dim]: cos then sin at frequencies 10000^(-i / (dim/2))."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=values.device)
    freqs = torch.exp(-math.log(10000.0) * steps / half)
    angles = values.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class ReferenceConfig(Config):
    """What the public models' configs (aMUSEd, Meissonic) share: a `sample_size` x `sample_size`
    token grid and a vocabulary whose last id is MASK. Subclasses define those fields."""

    objective = "masked"  # see MaskedTransformerConfig.objective

    sample_size: int
    vocab_size: int
    codebook_size: int

    def check_vocab(self) -> None:
        if self.vocab_size <= self.codebook_size:
            raise ConfigError(f"'vocab_size' is {self.vocab_size}; accepted: > codebook_size "
                              f"({self.codebook_size}), the last id being MASK")

    @property
    def grid(self) -> int:
        return self.sample_size

    @property
    def mask_id(self) -> int:
        return self.vocab_size - 1


class TwoLayerMLP(nn.Module):
    """Linear, SiLU, Linear (diffusers' TimestepEmbedding / PixArtAlphaTextProjection names)."""

    def __init__(self, dim_in: int, dim: int, bias: bool = True) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim, bias=bias)
        self.linear_2 = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm with its weight cast to the input's dtype: under bf16 autocast the input is
    bf16, and an fp32 weight sends torch to its unfused kernel, with a warning on every run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


class Resample(nn.Module):
    """RMSNorm (channels-last) then a 2x2 stride-2 conv (down) or transposed conv (up)."""

    def __init__(self, ch: int, cfg: ReferenceConfig, up: bool) -> None:
        super().__init__()
        self.up = up
        self.norm = RMSNorm(ch, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        conv = nn.ConvTranspose2d if up else nn.Conv2d
        self.conv = conv(ch, ch, kernel_size=2, stride=2, bias=cfg.use_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv(x if self.up else F.pad(x, (0, 1, 0, 1)))  # the pad only matters for odd sides
