"""The masked image transformer (Muse / MaskGIT): token grid + text -> logits per token.

    tokens [B, H, W] (codebook ids, `mask_id` where unknown)
      -> token embedding + 2D position embedding (row + column)
       [+ super-resolution: the low-res grid's token embeddings, nearest-upsampled onto it]
      -> depth x Block: x += gate * SelfAttn(mod(LN x));  x += CrossAttn(LN x, text);
                        x += gate * MLP(mod(LN x))      (mod: shift/scale from the pooled text)
      -> final LN (modulated) -> Linear -> logits [B, H, W, codebook_size]

Conditioning: `c = MLP(pooled text) [+ MLP(sinusoids of the micro-conditions)]` drives
adaLN-Zero modulation (DiT); per-token text states enter through cross-attention.
`prepare_text` computes the text keys/values of every block once, so a sampler reuses them
at every step.

Super-resolution (`low_res_grid` > 0, Muse's second stage): the base stage's token grid is
embedded and *added* to the high-res grid, each low-res token onto the block of high-res
positions it covers. Muse cross-attends to the low-res tokens instead; adding costs no
attention, and the alignment it hard-codes (64 px token (i, j) is 128 px tokens (2i..2i+1,
2j..2j+1)) is exact for a same-tokenizer upsampler, so a small model learns it in few steps.
Guidance drops only the text: the low-res grid conditions both branches.

Micro-conditions (`micro_conds`, SDXL / Meissonic): named scalars per image (original size,
crop corner, a score) as 64-d sinusoids, through an MLP added to c. NaN = unknown: that
condition's sinusoid is zeroed (training drops them at random, so the MLP's output at zero
is a learned "unknown").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, check_range, check_size
from ..errors import ConfigError
from ..hub import PretrainedMixin
from ..text.captions import check_caption_rule
from ..text.encoders import TextEmbedding
from .layers import modulate, sinusoid
from .rope import apply_rope, grid_ids, rope_table

MICRO_CONDS = ("orig_size", "crop_top", "crop_left", "score")  # what data/tokens.py records
MICRO_DIM = 64  # sinusoid width per micro-condition


def check_extras(cfg: Config) -> None:
    """Validate the fields the masked and the diffusion transformer share: heads, RoPE, the
    text layers and positions, the caption rule."""
    check_range("text_layers", cfg.text_layers, 0)
    check_range("text_positions", cfg.text_positions, 0)
    check_caption_rule(cfg.caption_rule)
    if cfg.dim % cfg.heads:
        raise ConfigError(f"'dim' is {cfg.dim}; accepted: a multiple of 'heads' ({cfg.heads})")
    if cfg.rope and (cfg.dim // cfg.heads) % 4:
        raise ConfigError(f"'rope' needs a head width (dim / heads = {cfg.dim // cfg.heads}) that is a "
                          "multiple of 4")


@dataclass
class MaskedTransformerConfig(Config):
    kind = "masked_transformer"
    # what training optimises (train/losses.py) and export describes: "masked" (tokens under a
    # mask), "autoregressive" (next token) or "diffusion" (flow on latents); one per config class
    objective = "masked"
    codebook_size: int = 1024  # of the image tokenizer; id codebook_size is MASK
    grid: int = 16  # tokens per side (resolution / tokenizer downsampling)
    dim: int = 384
    depth: int = 8
    heads: int = 6
    mlp_ratio: float = 4.0
    text_dim: int = 384  # per-token text states
    pooled_dim: int = 384  # pooled text vector
    text_encoder: str = "minilm"  # the encoder whose embeddings it was trained on
    tokenizer: str = "tokenizer-f8"  # the image tokenizer whose codes it predicts
    resolution: int = 128  # pixels = grid * tokenizer downsampling
    micro_conds: tuple[str, ...] = ()  # names, a subset of MICRO_CONDS in that order
    low_res_grid: int = 0  # > 0: a super-resolution stage, conditioned on this low-res token grid
    # 2D rotary position embedding in self-attention (half of each head's channels rotate with
    # the row, half with the column): attention scores then depend on relative offsets, so
    # "look at my neighbours" is there from the first step instead of being learned from
    # absolute embeddings (Meissonic, FLUX use axial RoPE too)
    rope: bool = False
    # a depthwise 3x3 convolution over the token grid before each block's self-attention
    # (residual, zero-initialised): every token reads its 8 neighbours directly, as in aMUSEd's
    # UViT and ConvNeXt-style blocks. Tried because the masked model barely used its neighbours;
    # at 64 px it changed neither that nor the suite (docs/masked-vs-ar.md). Masked models only
    # (a causal one would see the future)
    local: bool = False
    # transformer layers over the projected text states before the blocks read them (the text
    # encoder stays frozen; residual, zero-initialised): MiniLM's states of opposite relation
    # words are close (cosine 0.80 for "left" / "right" in the same caption) and cross-attention
    # keys alone barely separated them (docs/masked-vs-ar.md part 9)
    text_layers: int = 0
    # a learned embedding of each caption position (this many), added to the projected text
    # states (zero-initialised): MiniLM barely marks word order ("square" as the subject vs the
    # object of "left of": cosine 0.965), so without it nothing tells the blocks which shape a
    # relation's subject is (docs/masked-vs-ar.md part 10). 0: none
    text_positions: int = 0
    # the rewrite every caption gets before the text encoder, in training and at inference
    # (text/captions.py): "canonical_relations" states each relation one way per axis
    caption_rule: str = ""

    later_keys = ("rope", "local", "text_layers", "text_positions", "caption_rule")

    def validate(self) -> None:
        for name in ("codebook_size", "grid", "dim", "depth", "heads", "text_dim", "pooled_dim",
                     "resolution"):
            check_size(name, getattr(self, name))
        check_range("mlp_ratio", self.mlp_ratio, 0.0)
        check_extras(self)
        if list(self.micro_conds) != [m for m in MICRO_CONDS if m in self.micro_conds]:
            raise ConfigError(f"'micro_conds' is {list(self.micro_conds)}; accepted: distinct names from "
                              f"{', '.join(MICRO_CONDS)}, in that order")
        if self.low_res_grid and (self.low_res_grid >= self.grid or self.grid % self.low_res_grid):
            raise ConfigError(f"'low_res_grid' is {self.low_res_grid}; accepted: 0 (text-to-image) or a "
                              f"proper divisor of 'grid' ({self.grid})")

    @property
    def mask_id(self) -> int:
        return self.codebook_size

    def for_data(self, codebook_size: int, grid: int, text_dim: int, pooled_dim: int, text_encoder: str,
                 tokenizer: str) -> MaskedTransformerConfig:
        """This architecture sized for a tokenizer's codes and grid and a text encoder's widths."""
        return self.replace(codebook_size=codebook_size, grid=grid, text_dim=text_dim, pooled_dim=pooled_dim,
                            text_encoder=text_encoder, tokenizer=tokenizer)

    def describe(self) -> str:
        """One markdown line for model cards."""
        micro = f" + micro-conditions ({', '.join(self.micro_conds)})" if self.micro_conds else ""
        low = (f"; super-resolution from a {self.low_res_grid}x{self.low_res_grid} token grid, embedded and "
               "added to the positions it covers" if self.low_res_grid else "")
        return (f"dim {self.dim}, depth {self.depth}, heads {self.heads}, MLP x{self.mlp_ratio}; "
                "self-attention + cross-attention to the text states + MLP per block, adaLN-Zero "
                f"modulation from the pooled text{micro}; learned row + column position embeddings"
                f"{' + 2D rotary embeddings in self-attention' if self.rope else ''}"
                f"{'; a depthwise 3x3 conv over the token grid before each self-attention' * self.local}"
                f"{'; learned caption-position embeddings' * bool(self.text_positions)}"
                f"{f'; {self.text_layers} trained layers over the text states' * bool(self.text_layers)}"
                f"{low}")


def micro_names(cfg: Config) -> tuple[str, ...]:
    """A config's named micro-condition inputs: () but for our masked transformer (aMUSEd's UViT
    config has a `micro_conds` too, but of fixed values, not inputs)."""
    return cfg.micro_conds if isinstance(cfg, MaskedTransformerConfig) else ()


def low_res_grid(cfg: Config) -> int:
    """The low-res grid a super-resolution config upsamples (0: a text-to-image model)."""
    return cfg.low_res_grid if isinstance(cfg, MaskedTransformerConfig) else 0


@dataclass
class TextContext:
    """What a forward pass needs from the text, computed once per prompt batch."""

    c: torch.Tensor  # [B, dim] conditioning vector for the modulations
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per block: keys, values [B, heads, L, hd]
    mask: torch.Tensor  # [B, 1, 1, L] bool, True = attend
    grid: torch.Tensor | None = None  # [B, N, dim] added to the token embeddings (super-resolution)

    @staticmethod
    def cat(parts: list[TextContext]) -> TextContext:
        """Stack along the batch (e.g. conditional + unconditional), padding the text axis."""
        length = max(p.mask.shape[-1] for p in parts)

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            extra = length - t.shape[dim]
            return t if extra == 0 else torch.cat(
                [t, t.new_zeros(*t.shape[:dim], extra, *t.shape[dim + 1:])], dim)

        kv = [(torch.cat([pad(p.kv[i][0], 2) for p in parts]), torch.cat([pad(p.kv[i][1], 2) for p in parts]))
              for i in range(len(parts[0].kv))]
        grid = None if parts[0].grid is None else torch.cat([p.grid for p in parts])
        mask = torch.cat([pad(p.mask, 3) for p in parts])
        return TextContext(torch.cat([p.c for p in parts]), kv, mask, grid)

    def repeat(self, n: int | list[int]) -> TextContext:
        """Each prompt's context n times in a row (n images per prompt; or n[i] for prompt i)."""
        if not isinstance(n, int):
            n = torch.tensor(n, device=self.c.device)
        return TextContext(self.c.repeat_interleave(n, 0),
                           [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in self.kv],
                           self.mask.repeat_interleave(n, 0),
                           None if self.grid is None else self.grid.repeat_interleave(n, 0))


class KVCache:
    """Self-attention keys/values of the positions decoded so far (autoregressive sampling)."""

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def add(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k = k if self.k is None else torch.cat([self.k, k], 2)
        self.v = v if self.v is None else torch.cat([self.v, v], 2)
        return self.k, self.v


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, causal: bool = False,
                 local: bool = False) -> None:
        super().__init__()
        self.heads, self.causal = heads, causal
        if local:  # zero-initialised: the block starts as it would be without it (warm starts)
            self.local = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
            nn.init.zeros_(self.local.weight)
            nn.init.zeros_(self.local.bias)
        else:
            self.local = None
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.q_cross = nn.Linear(dim, dim)
        self.kv_cross = nn.Linear(dim, 2 * dim)
        self.proj_cross = nn.Linear(dim, dim)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Linear(dim, 6 * dim)  # shift, scale, gate for attention and MLP

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, d = t.shape
        return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_cross(text).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: torch.Tensor, c: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor],
                text_mask: torch.Tensor, cache: KVCache | None = None,
                rope: torch.Tensor | None = None, hw: tuple[int, int] | None = None) -> torch.Tensor:
        """`cache`: x is the next single position of a causal sequence whose earlier keys and
        values the cache holds (it attends to all of them and appends its own). `rope`: the
        cos/sin table [2, N, head_dim/2] of x's positions, or None. `hw`: the grid x's raster
        positions fill (for `local` mixing)."""
        b, n, d = x.shape
        if self.local is not None:
            grid = F.layer_norm(x, (d,), eps=1e-6).transpose(1, 2).reshape(b, d, *hw)
            x = x + self.local(grid).flatten(2).transpose(1, 2)
        s1, sc1, g1, s2, sc2, g2 = self.ada(F.silu(c)).chunk(6, dim=-1)
        q, k, v = (self._heads(t) for t in self.qkv(modulate(self.norm1(x), s1, sc1)).chunk(3, dim=-1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.add(k, v)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal and cache is None)
        x = x + g1.unsqueeze(1) * self.proj(a.transpose(1, 2).reshape(b, n, d))
        q = self._heads(self.q_cross(self.norm2(x)))
        a = F.scaled_dot_product_attention(q, kv[0], kv[1], attn_mask=text_mask)
        x = x + self.proj_cross(a.transpose(1, 2).reshape(b, n, d))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm3(x), s2, sc2))


def deepen(model: nn.Module, depth: int) -> nn.Module:
    """A copy of `model` (any model of `Block`s with a `config.depth`) with `depth` blocks, a
    multiple of its own: each block is followed by copies of itself whose residual branches
    start switched off (attention and MLP gates, cross-attention projection and local mixing
    zeroed), so the deeper model computes exactly what `model` does and its new blocks start
    from trained features (more capacity without starting over)."""
    k, extra = divmod(depth, model.config.depth)
    if extra or k < 1:
        raise ConfigError(f"depth {depth} is not a multiple of the model's depth {model.config.depth}")
    src = model.state_dict()

    def source(name: str) -> str:  # blocks.i.* here <- blocks.(i // k).* of `model`
        if not name.startswith("blocks."):
            return name
        _, i, rest = name.split(".", 2)
        return f"blocks.{int(i) // k}.{rest}"

    weight = next(model.parameters())
    deep = type(model)(model.config.replace(depth=depth)).to(device=weight.device, dtype=weight.dtype)
    deep.load_state_dict({name: src[source(name)] for name in deep.state_dict()})
    d = model.config.dim
    with torch.no_grad():
        for i, blk in enumerate(deep.blocks):
            if i % k:
                for gate in (slice(2 * d, 3 * d), slice(5 * d, 6 * d)):  # g1 and g2 of `ada`
                    blk.ada.weight[gate] = 0
                    blk.ada.bias[gate] = 0
                for layer in (blk.proj_cross, blk.local):  # ungated residuals
                    if layer is not None:
                        layer.weight.zero_()
                        layer.bias.zero_()
    return deep


def text_context(model: nn.Module, text: TextEmbedding) -> TextContext:
    """The TextContext of a model built from `Block`s with `text_proj` (per-token states),
    `cond` (pooled vector) and `head` (whose dtype it runs in): shared by the masked
    transformer and the diffusion transformer (dit.py)."""
    cfg = model.config
    if text.hidden.shape[-1] != cfg.text_dim or text.pooled.shape[-1] != cfg.pooled_dim:
        raise ConfigError(f"text embedding dims ({text.hidden.shape[-1]}, {text.pooled.shape[-1]}) "
                          f"do not match the model's (text_dim {cfg.text_dim}, pooled_dim "
                          f"{cfg.pooled_dim}); it was trained with the {cfg.text_encoder!r} encoder")
    dtype = model.dtype
    states = model.text_proj(text.hidden.to(dtype))
    if getattr(cfg, "text_positions", 0):  # words past the last embedded position share it
        at = torch.arange(states.shape[1], device=states.device).clamp(max=cfg.text_positions - 1)
        states = states + model.text_pos[at]
    for layer in getattr(model, "text_mix", ()):
        states = layer(states, src_key_padding_mask=~text.mask.bool())
    return TextContext(model.cond(text.pooled.to(dtype)), [blk.text_kv(states) for blk in model.blocks],
                       text.mask[:, None, None, :].bool())


def add_text_extras(model: nn.Module, cfg: Config) -> None:
    """The config's caption-position table (`text_positions`) and trained text layers
    (`text_layers`) on `model`; `text_context` applies them, `init_adaln_zero` starts them as
    no-ops. Shared by the masked and the diffusion transformer."""
    if cfg.text_positions:
        model.text_pos = nn.Parameter(torch.zeros(cfg.text_positions, cfg.dim))
    if cfg.text_layers:
        model.text_mix = nn.ModuleList(
            nn.TransformerEncoderLayer(cfg.dim, cfg.heads, int(cfg.mlp_ratio * cfg.dim), dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(cfg.text_layers))


def grid_rope(cfg: Config, h: int, w: int, device: torch.device,
              where: slice = slice(None)) -> torch.Tensor | None:
    """The 2D RoPE cos/sin table [2, N, head_dim/2] of the raster positions `where` of an h x w
    grid: half of each head's channel pairs turn with the row, half with the column (None
    without `cfg.rope`)."""
    if not cfg.rope:
        return None
    half = cfg.dim // cfg.heads // 2
    return rope_table(grid_ids(h, w, device)[where, 1:], (half, half))


def init_adaln_zero(model: nn.Module, embeddings: tuple[torch.Tensor, ...]) -> None:
    """DiT's initialisation for a model of `Block`s with `ada_out`: Xavier linears with zero
    biases, N(0, 0.02) embeddings, and adaLN-Zero (every block's and the output's modulation at
    zero, so blocks start as the identity; so do the text layers' residual branches)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    for p in embeddings:
        nn.init.normal_(p, std=0.02)
    for layer in [blk.ada for blk in model.blocks] + [model.ada_out]:
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    for layer in getattr(model, "text_mix", ()):
        for out in (layer.self_attn.out_proj, layer.linear2):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)


class MaskedTransformer(PretrainedMixin, nn.Module):
    config_class = MaskedTransformerConfig
    causal = False  # bidirectional self-attention; models/autoregressive.py sets it

    def __init__(self, config: MaskedTransformerConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.tok_emb = nn.Embedding(cfg.codebook_size + 1, cfg.dim)
        self.row_emb = nn.Parameter(torch.zeros(cfg.grid, cfg.dim))
        self.col_emb = nn.Parameter(torch.zeros(cfg.grid, cfg.dim))
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, cfg.dim))
        self.cond = nn.Sequential(nn.Linear(cfg.pooled_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        if cfg.micro_conds:
            k = len(cfg.micro_conds) * MICRO_DIM
            self.micro = nn.Sequential(nn.Linear(k, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        if cfg.low_res_grid:
            self.low_emb = nn.Embedding(cfg.codebook_size, cfg.dim)
        add_text_extras(self, cfg)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, self.causal, cfg.local)
                                    for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(cfg.dim, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(cfg.dim, 2 * cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.codebook_size)
        init_adaln_zero(self, (self.tok_emb.weight, self.row_emb, self.col_emb))
        nn.init.normal_(self.head.weight, std=0.02)
        # new conditions start switched off, so a model warm-started from one without them
        # (train/warm_start.py) begins exactly where that model was
        if cfg.micro_conds:
            nn.init.zeros_(self.micro[2].weight)
        if cfg.low_res_grid:
            nn.init.zeros_(self.low_emb.weight)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def prepare_text(self, text: TextEmbedding, micro: torch.Tensor | None = None) -> TextContext:
        """`micro` [B, len(micro_conds)] float, NaN = unknown (None: all unknown); models
        without micro-conditions take None only."""
        ctx = text_context(self, text)
        names = self.config.micro_conds
        if micro is None and not names:
            return ctx
        if not names:
            raise ConfigError("micro-conditions given, but this model has none")
        b = ctx.c.shape[0]
        if micro is None:
            micro = torch.full((b, len(names)), float("nan"), device=ctx.c.device)
        if micro.shape != (b, len(names)):
            raise ConfigError(f"micro-conditions have shape {tuple(micro.shape)}; accepted: "
                              f"({b}, {len(names)}) for {', '.join(names)}")
        micro = micro.to(ctx.c.device)
        known = ~micro.isnan()
        feats = sinusoid(micro.nan_to_num().flatten(), MICRO_DIM).view(b, len(names), MICRO_DIM)
        feats = (feats * known[..., None]).flatten(1).to(ctx.c.dtype)
        ctx.c = ctx.c + self.micro(feats)
        return ctx

    def with_low_res(self, ctx: TextContext, low_res: torch.Tensor) -> TextContext:
        """A super-resolution model's context: `ctx` (rows = images) + the low-res token grids
        [B, g, g] embedded and nearest-upsampled onto the model's grid."""
        g, lg = self.config.grid, self.config.low_res_grid
        if not lg:
            raise ConfigError("low_res tokens given, but this is not a super-resolution model")
        b = ctx.c.shape[0]
        if low_res.shape != (b, lg, lg) or low_res.is_floating_point():
            raise ConfigError(f"low_res has shape {tuple(low_res.shape)}; accepted: integer token grids "
                              f"({b}, {lg}, {lg})")
        if low_res.min() < 0 or low_res.max() >= self.config.codebook_size:
            raise ConfigError(f"low_res holds ids outside the codes 0..{self.config.codebook_size - 1}")
        up = low_res.repeat_interleave(g // lg, 1).repeat_interleave(g // lg, 2)
        return TextContext(ctx.c, ctx.kv, ctx.mask, self.low_emb(up.to(ctx.c.device).flatten(1)))

    def context(self, text: TextEmbedding, micro: torch.Tensor | None = None,
                low_res: torch.Tensor | None = None) -> TextContext:
        """Everything a forward pass is conditioned on besides the tokens: the text (+ micro-
        conditions), and for a super-resolution model the low-res grids (rows = images)."""
        ctx = self.prepare_text(text, micro)
        return self.with_low_res(ctx, low_res) if low_res is not None else ctx

    def forward(self, tokens: torch.Tensor, text: TextContext | TextEmbedding,
                micro: torch.Tensor | None = None, low_res: torch.Tensor | None = None) -> torch.Tensor:
        """tokens [B, H, W] long -> logits [B, H, W, codebook_size]. `micro`, `low_res`: with a
        TextEmbedding only (a TextContext already holds them), see `context`."""
        ctx = self.context(text, micro, low_res) if isinstance(text, TextEmbedding) else text
        b, h, w = tokens.shape
        g = self.config.grid
        if h > g or w > g:
            raise ConfigError(f"token grid {h}x{w} is larger than the model's {g}x{g}")
        if self.config.low_res_grid and (ctx.grid is None or (h, w) != (g, g)):
            raise ConfigError(f"this super-resolution model predicts whole {g}x{g} grids from "
                              f"{self.config.low_res_grid}x{self.config.low_res_grid} low_res tokens")
        return self.run(tokens.reshape(b, h * w), self.positions(h, w), ctx, rope=self.rope(h, w), hw=(h, w)
                        ).view(b, h, w, -1)

    def positions(self, h: int, w: int) -> torch.Tensor:
        """Position embeddings [h*w, dim] of an h x w grid in raster order."""
        return (self.row_emb[:h, None, :] + self.col_emb[None, :w, :]).reshape(h * w, -1)

    def rope(self, h: int, w: int, where: slice = slice(None)) -> torch.Tensor | None:
        """The RoPE cos/sin table [2, N, head_dim/2] of the raster positions `where` of an
        h x w grid: half of each head's channel pairs turn with the row, half with the column
        (None without `rope`)."""
        return grid_rope(self.config, h, w, self.row_emb.device, where)

    def run(self, ids: torch.Tensor, pos: torch.Tensor, ctx: TextContext,
            caches: list[KVCache] | None = None, rope: torch.Tensor | None = None,
            hw: tuple[int, int] | None = None) -> torch.Tensor:
        """ids [B, N] + position embeddings [N, dim] (+ their RoPE table; + the h x w grid the N
        raster positions fill, for `local` mixing) -> logits [B, N, codebook_size]."""
        x = self.tok_emb(ids) + pos
        if ctx.grid is not None:
            x = x + ctx.grid
        for i, (blk, kv) in enumerate(zip(self.blocks, ctx.kv, strict=True)):
            x = blk(x, ctx.c, kv, ctx.mask, None if caches is None else caches[i], rope, hw)
        shift, scale = self.ada_out(F.silu(ctx.c)).chunk(2, dim=-1)
        return self.head(modulate(self.norm_out(x), shift, scale))
