"""A text-conditioned diffusion transformer (DiT-style) on the VQ tokenizer's latent, in
TrigFlow form: the continuous-family teacher that the DMD and sCM students distil
(sampling/trigflow.py).

    x_t [B, D, h, w] / sigma_d -> p x p patches -> Linear -> + row/column position embeddings
      -> depth x Block (models/transformer.py: adaLN-Zero self-attention, cross-attention to the
         text states, MLP), modulated by c = MLP(pooled text) + MLP(sinusoid(t))
      -> modulated LN -> Linear -> patches -> F [B, D, h, w];   velocity v = sigma_d F

The data x0 are the codebook vectors of the masked model's own tokens (tokenizer-f8: 32-d on a
16 x 16 grid at 128 px), times `latent_scale` (std sigma_d over the training set); images come
from the same VQ decoder. So the two families share data, sequence length and decoder, and
differ only in the generative model. (Pixels with 8 x 8 patches, tried first, still gave
patch-wise noise after 600 CPU steps; the latent is LDM's VQ-regularised choice.) The time
embedding takes t in [0, pi/2] unscaled, so the highest frequency is 1: smooth in t, as sCM's
tangents need.

The masked model's text path and positions are options here too (RoPE, trained text layers,
caption positions, the caption rule); with them and the same size, `init_from` a trained
masked model copies everything but the input and output projections and the time MLP, so the
diffusion model starts with the masked model's reading of the prompt (train/warm_start.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, check_range, check_size
from ..errors import ConfigError
from ..hub import PretrainedMixin
from ..text.encoders import TextEmbedding
from .layers import modulate, sinusoid
from .transformer import (
    Block,
    TextContext,
    add_text_extras,
    check_extras,
    grid_rope,
    init_adaln_zero,
    text_context,
)

if TYPE_CHECKING:
    from ..sampling.trigflow import Velocity


POS_EMBEDS = ("learned", "sincos")


@dataclass
class DiTConfig(Config):
    kind = "dit"
    objective = "diffusion"  # see MaskedTransformerConfig.objective
    later_keys = ("pos_embed", "time_mean", "time_std", "rope", "text_layers", "text_positions",
                  "caption_rule")  # folders written before them load
    grid: int = 16  # latent side
    patch: int = 1
    channels: int = 32  # the tokenizer's code dimension
    resolution: int = 128  # image side: grid x the tokenizer's downsampling
    tokenizer: str = "tokenizer-f8"
    latent_scale: float = 1.0  # codebook vectors x this = the data x0 (set by the trainer)
    dim: int = 256
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    text_dim: int = 384
    pooled_dim: int = 384
    text_encoder: str = "minilm"
    sigma_d: float = 0.5  # data standard deviation (latent_scale makes it so)
    # "learned" row + column tables (N(0, 0.02) at init), or DiT's fixed 2-D sin-cos at unit
    # scale: learned tables stay ~10x below the embedded noise at high t, where layout is decided
    pos_embed: str = "learned"
    # training times: tau ~ N(time_mean, time_std), t = arctan(e^tau / sigma_d) (sCM's -1.0, 1.4
    # put 13% of samples above t = 1.3, the band where the first steps fix the layout)
    time_mean: float = -1.0
    time_std: float = 1.4
    # as in MaskedTransformerConfig (models/transformer.py): 2D RoPE in self-attention, trained
    # layers over the text states, caption-position embeddings, the caption rewrite. With the
    # same dim / depth / heads, `init_from` a masked model copies its blocks and text layers
    rope: bool = False
    text_layers: int = 0
    text_positions: int = 0
    caption_rule: str = ""

    def validate(self) -> None:
        for name in ("grid", "resolution", "patch", "channels", "dim", "depth", "heads", "text_dim",
                     "pooled_dim"):
            check_size(name, getattr(self, name))
        check_range("sigma_d", self.sigma_d, 1e-3)
        check_range("latent_scale", self.latent_scale, 1e-6)
        check_range("time_std", self.time_std, 1e-3)
        check_extras(self)
        if self.pos_embed not in POS_EMBEDS:
            raise ConfigError(f"'pos_embed' is {self.pos_embed!r}; accepted: {', '.join(POS_EMBEDS)}")
        if self.grid % self.patch:
            raise ConfigError(f"'grid' is {self.grid}; accepted: a multiple of 'patch' ({self.patch})")

    def describe(self) -> str:
        return (f"{self.patch}x{self.patch} patches of the {self.grid}x{self.grid}x{self.channels} latent, "
                f"dim {self.dim}, depth {self.depth}, heads {self.heads}, MLP x{self.mlp_ratio}; "
                "self-attention + cross-attention to the text states + MLP per block, adaLN-Zero "
                "modulation from the pooled text + a sinusoidal embedding of t"
                f"{' + 2D rotary embeddings in self-attention' if self.rope else ''}"
                f"{'; learned caption-position embeddings' * bool(self.text_positions)}"
                f"{f'; {self.text_layers} trained layers over the text states' * bool(self.text_layers)}")


class DiT(PretrainedMixin, nn.Module):
    config_class = DiTConfig

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        patch_dim, cells = cfg.channels * cfg.patch**2, cfg.grid // cfg.patch
        self.patch_in = nn.Linear(patch_dim, cfg.dim)
        tables = ()
        if cfg.pos_embed == "learned":
            self.row_emb = nn.Parameter(torch.zeros(cells, cfg.dim))
            self.col_emb = nn.Parameter(torch.zeros(cells, cfg.dim))
            tables = (self.row_emb, self.col_emb)
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.dim))
        self.cond = nn.Sequential(nn.Linear(cfg.pooled_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        add_text_extras(self, cfg)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.head = nn.Linear(cfg.dim, patch_dim)
        init_adaln_zero(self, tables)
        nn.init.zeros_(self.head.weight)  # the output starts at zero
        # the time condition starts switched off, so blocks warm-started from a masked model
        # (init_from) first see the conditioning they were trained with
        nn.init.zeros_(self.time[2].weight)

    def prepare_text(self, text: TextEmbedding) -> TextContext:
        return text_context(self, text)

    def forward(self, x: torch.Tensor, t: torch.Tensor, text: TextContext | TextEmbedding,
                features: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x [B, C, H, W] (already divided by sigma_d), t [B] in [0, pi/2] -> F [B, C, H, W];
        with `features`, also the last block's tokens [B, N, dim] (DMD2's discriminator input)."""
        ctx = self.prepare_text(text) if isinstance(text, TextEmbedding) else text
        cfg, (b, ch, h, w) = self.config, x.shape
        p = cfg.patch
        if ch != cfg.channels or h % p or w % p or h > cfg.grid or w > cfg.grid:
            raise ConfigError(f"input {ch}x{h}x{w}; accepted: {cfg.channels} channels, sides multiples of "
                              f"{p} up to {cfg.grid}")
        gh, gw = h // p, w // p
        patches = x.view(b, ch, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, ch * p * p)
        tokens = self.patch_in(patches.to(self.dtype)) + self.positions(gh, gw, x.device).to(self.dtype)
        c = ctx.c + self.time(sinusoid(t, cfg.dim).to(ctx.c.dtype))
        rope = grid_rope(cfg, gh, gw, x.device)
        for blk, kv in zip(self.blocks, ctx.kv, strict=True):
            tokens = blk(tokens, c, kv, ctx.mask, rope=rope)
        shift, scale = self.ada_out(F.silu(c)).chunk(2, dim=-1)
        out = self.head(modulate(self.norm_out(tokens), shift, scale))
        out = out.view(b, gh, gw, ch, p, p).permute(0, 3, 1, 4, 2, 5).reshape(b, ch, h, w)
        return (out, tokens) if features else out

    def positions(self, gh: int, gw: int, device: torch.device) -> torch.Tensor:
        """[gh * gw, dim] position embeddings of a gh x gw patch grid, row-major."""
        if self.config.pos_embed == "learned":
            return (self.row_emb[:gh, None] + self.col_emb[None, :gw]).reshape(gh * gw, -1)
        half = self.config.dim // 2  # rows in the first half of the channels, columns in the second
        rows = sinusoid(torch.arange(gh, device=device), half)[:, None].expand(gh, gw, half)
        cols = sinusoid(torch.arange(gw, device=device), half)[None, :].expand(gh, gw, half)
        return torch.cat([rows, cols], dim=-1).reshape(gh * gw, -1)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, ctx: TextContext) -> torch.Tensor:
        """dx_t/dt = sigma_d F(x_t / sigma_d, t): what sampling/trigflow.py's closures return."""
        s = self.config.sigma_d
        return s * self(x_t / s, t, ctx).float()

    def guided(self, cond: TextContext, uncond: TextContext | None, guidance: float) -> Velocity:
        """The velocity closure the samplers take, with classifier-free guidance in our masked
        models' convention: v = v_c + g (v_c - v_u), so g = 0 is the plain conditional model;
        both halves run as one batch."""
        if uncond is None or guidance == 0:
            return lambda x, t: self.velocity(x, t, cond)
        both = TextContext.cat([cond, uncond])

        def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            v_c, v_u = self.velocity(torch.cat([x, x]), torch.cat([t, t]), both).chunk(2)
            return v_c + guidance * (v_c - v_u)

        return velocity


def token_latents(tokenizer, tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """Token ids [B, h, w] -> the DiT's data x0 [B, D, h, w]: codebook vectors x latent_scale."""
    with torch.no_grad():
        return scale * tokenizer.quantize.lookup(tokens.long())


def latent_scale(tokenizer, tokens: torch.Tensor, sigma_d: float) -> float:
    """The scale that gives the training set's codebook vectors standard deviation sigma_d."""
    return float(sigma_d / token_latents(tokenizer, tokens, 1.0).double().std())
