"""Meissonic's masked multimodal diffusion transformer (viiika/Meissonic `Transformer2DModel`),
written for fastmuse.

    tokens [B, H, W] -> embedding (Embedding, RMSNorm, 1x1 conv) -> [optional 2x downsample:
      the token compression, 64x64 -> 32x32] -> RMSNorm, Linear -> joint sequence [text, image]
      -> num_layers x TransformerBlock (two streams, one joint attention)
      -> num_single_layers x SingleTransformerBlock (one stream: attention and MLP in parallel)
      -> image part -> RMSNorm, Linear -> [optional 2x upsample] -> 1x1 conv MLM head

    TransformerBlock: text and image each get their own adaLN-Zero modulation (shift, scale,
        gate x 2 from temb), q/k/v projections, RMSNorm on q and k, output projection and
        GELU(tanh) MLP; the attention runs over the concatenation [text, image].
    SingleTransformerBlock: one adaLN-Zero (shift, scale, gate); attention and a GELU(tanh)
        MLP read the same normalised input, their outputs are concatenated and projected.
    Positions: 2D rotary embedding on q and k (Flux's `FluxPosEmbed`): each position has ids
        (0, row, col) and the head dimension is split in `axes_dims_rope` parts, one per id;
        text tokens have ids (0, 0, 0), i.e. no rotation. Rows/columns are those of the grid
        the transformer sees (after the downsample).
    temb = time_text_embed.timestep_embedder(sinusoid(timestep)) + time_text_embed.text_embedder(
             cond_embed([pooled text, sinusoid(micro-conditions)]))

Parameter names are Meissonic's (which are diffusers' Flux / aMUSEd names), so a Meissonic
`transformer/` state dict loads with the identity key table. Numbers Meissonic hard-codes in
its constructor (RMSNorm eps 1e-6 with weights, no biases outside the Flux blocks, 5 x 256
micro-condition sinusoids) are class constants of MMDiTConfig, not fields.

Timestep. Meissonic conditions on a "timestep" and its forward multiplies what it is given by
1000 before the sinusoid. Its training script passes `mask_prob * 1000` (the masking ratio
drawn for the batch; so the sinusoid reads mask_prob * 1e6), while its sampling pipeline passes
the scheduler's step index (`torch.arange(steps).flip(0)`: steps-1 ... 0, so 63000 ... 0 for the
64 steps of its inference.py): the two disagree. fastmuse has one definition, used by training
and sampling alike because both only call `forward`: `mask_timestep(tokens)`, the fraction of
MASK tokens in the grid x 1000 (Meissonic's training convention), times 1000 inside the model.

Text. Joint attention mixes text and image inside every block, so no per-block keys/values can
be precomputed; `prepare_text` computes the rest once per prompt. TextContext convention:
    c:    [B, D]  the text half of temb (text_embedder(cond_embed(...))); forward adds the
                  timestep half
    kv:   one pair: (text states [B, 1, L, D] after context_embedder + RMSNorm,
                     text rotary table [B, 2, L, head_dim/2]: cos, sin of the text positions)
          (the text axis is dim 2, as TextContext.cat pads it and repeat copies dim 0)
    mask: [B, 1, 1, L] True = attend; image tokens are always attended. Meissonic attends to
          every text position (CLIP padded to 77, all kept); a mask only hides the padding
          that TextContext.cat adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_size
from ..errors import ConfigError
from ..hub import PretrainedMixin
from ..text.encoders import TextEmbedding
from .layers import ReferenceConfig, Resample, RMSNorm, TwoLayerMLP, sinusoid
from .rope import apply_rope, grid_ids, rope_table
from .transformer import TextContext


@dataclass
class MMDiTConfig(ReferenceConfig):
    """Meissonic's `Transformer2DModel` arguments (same names) + what fastmuse's pipeline needs.

    Defaults: the published Meissonic 1B (MeissonFlow/Meissonic `transformer/config.json`; that
    file is not in the code repository, the values are the hub config's as reported).
    Meissonic's own constructor defaults are Flux's (19 + 38 blocks, 24 heads, text width 4096,
    pooled 768) and do not even run (pooled_projection_dim must equal the width)."""

    kind = "mmdit"
    patch_size: int = 1  # Flux's key; Meissonic never patchifies (must be 1)
    in_channels: int = 64  # Flux's key; unused (the token embedding is `width` wide)
    num_layers: int = 14  # double-stream TransformerBlocks
    num_single_layers: int = 28  # single-stream SingleTransformerBlocks
    attention_head_dim: int = 128
    num_attention_heads: int = 8
    joint_attention_dim: int = 1024  # per-token text width (CLIP-H penultimate layer)
    pooled_projection_dim: int = 1024  # pooled text width; also the input of time_text_embed
    guidance_embeds: bool = False  # Meissonic: "unused"; True builds a model its forward cannot call
    axes_dims_rope: tuple[int, ...] = (16, 56, 56)  # rotary dims per position id; sum = head dim
    vocab_size: int = 8256  # codebook + MASK (the last id), rounded up
    codebook_size: int = 8192
    downsample: bool = True
    upsample: bool = True
    # fastmuse's side
    sample_size: int = 64  # tokens per side of the input grid
    micro_conds: tuple[float, ...] = (1024.0, 1024.0, 0.0, 0.0, 6.0)  # Meissonic's sampling default
    text_encoder: str = "text_encoder"  # a folder beside the transformer's, or an encoder name
    tokenizer: str = "vqvae"
    resolution: int = 1024

    # hard-coded in Meissonic's constructor (and read by uvit.Resample)
    layer_norm_eps: ClassVar[float] = 1e-6
    ln_elementwise_affine: ClassVar[bool] = True
    use_bias: ClassVar[bool] = False
    micro_cond_encode_dim: ClassVar[int] = 256  # x 5 micro-conditions = its micro_cond_embed_dim 1280
    n_micro_conds: ClassVar[int] = 5
    timestep_dim: ClassVar[int] = 256  # sinusoid width of the timestep (diffusers' Timesteps(256))
    rope_theta: ClassVar[float] = 10000.0
    mlp_ratio: ClassVar[int] = 4

    def validate(self) -> None:
        for name in ("attention_head_dim", "num_attention_heads", "joint_attention_dim",
                     "pooled_projection_dim", "in_channels", "vocab_size", "codebook_size", "sample_size",
                     "resolution"):
            check_size(name, getattr(self, name))
        check_size("num_layers", self.num_layers, 0)
        check_size("num_single_layers", self.num_single_layers, 0)
        if self.patch_size != 1:
            raise ConfigError(f"'patch_size' is {self.patch_size}; accepted: 1 (Meissonic does not patchify)")
        if self.guidance_embeds:
            raise ConfigError("'guidance_embeds' is true; accepted: false (Meissonic's forward has no "
                              "guidance embedding path)")
        self.check_vocab()
        if len(self.axes_dims_rope) != 3 or any(d < 2 or d % 2 for d in self.axes_dims_rope):
            raise ConfigError(f"'axes_dims_rope' is {list(self.axes_dims_rope)}; accepted: 3 even sizes "
                              f"(position ids 0, row, column)")
        if sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ConfigError(f"'axes_dims_rope' sums to {sum(self.axes_dims_rope)}; accepted: "
                              f"attention_head_dim ({self.attention_head_dim}), the rotary embedding "
                              f"covers each head")
        if self.pooled_projection_dim != self.width:
            raise ConfigError(f"'pooled_projection_dim' is {self.pooled_projection_dim}; accepted: "
                              f"num_attention_heads x attention_head_dim = {self.width} (time_text_embed "
                              f"reads cond_embed's output, which is that wide)")
        if self.downsample != self.upsample:
            raise ConfigError(f"'upsample' is {self.upsample}; accepted: equal to downsample "
                              f"({self.downsample}), else the output grid is not the input's")
        if self.downsample and self.sample_size % 2:
            raise ConfigError(f"'sample_size' is {self.sample_size}; accepted: even when downsample is on")
        if len(self.micro_conds) != self.n_micro_conds:
            raise ConfigError(f"'micro_conds' has {len(self.micro_conds)} values; accepted: "
                              f"{self.n_micro_conds} (width, height, crop top, crop left, score)")

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def text_dim(self) -> int:
        return self.joint_attention_dim

    @property
    def pooled_dim(self) -> int:
        return self.pooled_projection_dim

    def for_data(self, codebook_size: int, grid: int, text_dim: int, pooled_dim: int, text_encoder: str,
                 tokenizer: str) -> MMDiTConfig:
        """This architecture sized for a tokenizer's codes and grid and a text encoder's widths
        (the pooled text must be as wide as the model: heads x head_dim)."""
        return self.replace(codebook_size=codebook_size, vocab_size=codebook_size + 1, sample_size=grid,
                            joint_attention_dim=text_dim, pooled_projection_dim=pooled_dim,
                            text_encoder=text_encoder, tokenizer=tokenizer)

    def describe(self) -> str:
        """One markdown line for model cards."""
        compression = ", 2x token compression" if self.downsample else ""
        return (f"Meissonic MMDiT: width {self.width} ({self.num_attention_heads} heads x "
                f"{self.attention_head_dim}), {self.num_layers} double-stream + {self.num_single_layers} "
                f"single-stream blocks, 2D rotary positions{compression}")


# -- timestep -----------------------------------------------------------------------------------

TIMESTEP_SCALE = 1000.0  # Meissonic's forward: `timestep * 1000` before the sinusoid


def mask_timestep(tokens: torch.Tensor, mask_id: int) -> torch.Tensor:
    """tokens [B, ...] -> [B] float32: the `timestep` Meissonic's training passes, i.e. the
    fraction of MASK tokens x 1000. (Meissonic's training draws the ratio first and masks
    round(ratio x N) >= 1 tokens; counting them here is what lets sampling use the same value.)"""
    return (tokens == mask_id).flatten(1).float().mean(1) * 1000.0


# -- blocks -------------------------------------------------------------------------------------

class GeluProj(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """diffusers' FeedForward("gelu-approximate"): net.0 = GELU(tanh) projection, net.1 = dropout,
    net.2 = output projection."""

    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.net = nn.ModuleList([GeluProj(dim, inner), nn.Identity(), nn.Linear(inner, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class AdaNormZero(nn.Module):
    """LayerNorm (no weights) modulated by `chunks` vectors from temb: returns the modulated
    input (shift, scale = the first two) and the remaining chunks (gates, MLP shift/scale)."""

    def __init__(self, dim: int, chunks: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, chunks * dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.chunks = chunks

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        shift, scale, *rest = self.linear(F.silu(temb)).chunk(self.chunks, dim=1)
        return (self.norm(x) * (1 + scale[:, None]) + shift[:, None], *rest)


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor:
    """[B, S, heads * head_dim] -> [B, heads, S, head_dim]."""
    return t.unflatten(-1, (-1, head_dim)).transpose(1, 2)


class JointAttention(nn.Module):
    """Attention with RMSNorm on q and k and rotary positions. `joint`: a second (text) stream
    with its own projections (add_*_proj, norm_added_*, to_add_out) and an image output
    projection (to_out.0); otherwise (single-stream blocks) no output projection at all."""

    def __init__(self, dim: int, heads: int, head_dim: int, joint: bool) -> None:
        super().__init__()
        inner = heads * head_dim
        self.head_dim = head_dim
        self.norm_q = RMSNorm(head_dim, eps=1e-6)
        self.norm_k = RMSNorm(head_dim, eps=1e-6)
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        if joint:
            self.to_out = nn.ModuleList([nn.Linear(inner, dim)])  # diffusers' name: to_out.0
            self.norm_added_q = RMSNorm(head_dim, eps=1e-6)
            self.norm_added_k = RMSNorm(head_dim, eps=1e-6)
            self.add_q_proj = nn.Linear(dim, inner)
            self.add_k_proj = nn.Linear(dim, inner)
            self.add_v_proj = nn.Linear(dim, inner)
            self.to_add_out = nn.Linear(inner, dim)

    def _qkv(self, x: torch.Tensor, added: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if added:
            projs, nq, nk = (self.add_q_proj, self.add_k_proj, self.add_v_proj), self.norm_added_q, \
                self.norm_added_k
        else:
            projs, nq, nk = (self.to_q, self.to_k, self.to_v), self.norm_q, self.norm_k
        q, k, v = (_heads(p(x), self.head_dim) for p in projs)
        return nq(q), nk(k), v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None):
        """x [B, N, dim] (+ context [B, L, dim], placed first in the joint sequence); rope: cos,
        sin broadcastable to [B, heads, L + N, head_dim / 2]; mask: keys to attend, [B, 1, 1, L + N].
        Returns the attention output (single stream) or (image output, text output)."""
        q, k, v = self._qkv(x, added=False)
        if context is not None:
            cq, ck, cv = self._qkv(context, added=True)
            q, k, v = torch.cat([cq, q], 2), torch.cat([ck, k], 2), torch.cat([cv, v], 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).flatten(2)
        if context is None:
            return out
        n_text = context.shape[1]
        return self.to_out[0](out[:, n_text:]), self.to_add_out(out[:, :n_text])


def _clip_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clip(-65504, 65504) if x.dtype == torch.float16 else x


class TransformerBlock(nn.Module):
    """Double-stream block (Meissonic's TransformerBlock = diffusers' FluxTransformerBlock)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm1 = AdaNormZero(dim, 6)
        self.norm1_context = AdaNormZero(dim, 6)
        self.attn = JointAttention(dim, heads, head_dim, joint=True)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff = FeedForward(dim, mlp_ratio * dim)
        self.norm2_context = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.ff_context = FeedForward(dim, mlp_ratio * dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (text states, image states), Meissonic's order."""
        h, gate, mlp_shift, mlp_scale, mlp_gate = self.norm1(x, temb)
        hc, c_gate, c_mlp_shift, c_mlp_scale, c_mlp_gate = self.norm1_context(context, temb)
        a, ac = self.attn(h, hc, rope, mask)
        x = x + gate[:, None] * a
        x = x + mlp_gate[:, None] * self.ff(self.norm2(x) * (1 + mlp_scale[:, None]) + mlp_shift[:, None])
        context = context + c_gate[:, None] * ac
        hc = self.norm2_context(context) * (1 + c_mlp_scale[:, None]) + c_mlp_shift[:, None]
        context = context + c_mlp_gate[:, None] * self.ff_context(hc)
        return _clip_fp16(context), x


class SingleTransformerBlock(nn.Module):
    """Single-stream block over the joint [text, image] sequence (Meissonic's
    SingleTransformerBlock; diffusers' FluxSingleTransformerBlock computes the same but takes
    and returns the two parts separately)."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm = AdaNormZero(dim, 3)
        self.proj_mlp = nn.Linear(dim, mlp_ratio * dim)
        self.proj_out = nn.Linear(dim + mlp_ratio * dim, dim)
        self.attn = JointAttention(dim, heads, head_dim, joint=False)

    def forward(self, x: torch.Tensor, temb: torch.Tensor,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        h, gate = self.norm(x, temb)
        mlp = F.gelu(self.proj_mlp(h), approximate="tanh")
        both = torch.cat([self.attn(h, rope=rope, mask=mask), mlp], dim=2)
        return _clip_fp16(x + gate[:, None] * self.proj_out(both))


class ResampleBlock(nn.Module):
    """Meissonic's Simple_UVitBlock: only an optional 2x downsample and/or 2x upsample (RMSNorm
    + 2x2 stride-2 conv / transposed conv, diffusers' Downsample2D / Upsample2D); no ConvNeXt
    or attention blocks, unlike aMUSEd's."""

    def __init__(self, cfg: MMDiTConfig, downsample: bool, upsample: bool) -> None:
        super().__init__()
        self.downsample = Resample(cfg.width, cfg, up=False) if downsample else None  # type: ignore[arg-type]
        self.upsample = Resample(cfg.width, cfg, up=True) if upsample else None  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        return x if self.upsample is None else self.upsample(x)


class MMDiT(PretrainedMixin, nn.Module):
    config_class = MMDiTConfig

    def __init__(self, config: MMDiTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        d, eps, affine, bias = cfg.width, cfg.layer_norm_eps, cfg.ln_elementwise_affine, cfg.use_bias
        heads, hd = cfg.num_attention_heads, cfg.attention_head_dim
        self.time_text_embed = nn.Module()
        self.time_text_embed.timestep_embedder = TwoLayerMLP(cfg.timestep_dim, d)
        self.time_text_embed.text_embedder = TwoLayerMLP(cfg.pooled_projection_dim, d)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, d)
        self.transformer_blocks = nn.ModuleList(TransformerBlock(d, heads, hd, cfg.mlp_ratio)
                                                for _ in range(cfg.num_layers))
        self.single_transformer_blocks = nn.ModuleList(SingleTransformerBlock(d, heads, hd, cfg.mlp_ratio)
                                                       for _ in range(cfg.num_single_layers))
        # the aMUSEd-style parts; Meissonic's embedding width ("in_channels_embed") is the width
        self.embed = nn.Module()
        self.embed.embeddings = nn.Embedding(cfg.vocab_size, d)
        self.embed.layer_norm = RMSNorm(d, eps, affine)
        self.embed.conv = nn.Conv2d(d, d, 1, bias=bias)
        self.mlm_layer = nn.Module()
        self.mlm_layer.conv1 = nn.Conv2d(d, d, 1, bias=bias)
        self.mlm_layer.layer_norm = RMSNorm(d, eps, affine)
        self.mlm_layer.conv2 = nn.Conv2d(d, cfg.codebook_size, 1, bias=bias)
        micro_dim = cfg.n_micro_conds * cfg.micro_cond_encode_dim  # Meissonic's micro_cond_embed_dim
        self.cond_embed = TwoLayerMLP(micro_dim + cfg.pooled_projection_dim, d, bias=bias)
        self.encoder_proj_layer_norm = RMSNorm(d, eps, affine)
        self.project_to_hidden_norm = RMSNorm(d, eps, affine)
        self.project_to_hidden = nn.Linear(d, d, bias=bias)
        self.project_from_hidden_norm = RMSNorm(d, eps, affine)
        self.project_from_hidden = nn.Linear(d, d, bias=bias)
        self.down_block = ResampleBlock(cfg, downsample=cfg.downsample, upsample=False)
        self.up_block = ResampleBlock(cfg, downsample=False, upsample=cfg.upsample)
        self._rope_cache: dict[tuple, torch.Tensor] = {}

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def timestep(self, tokens: torch.Tensor) -> torch.Tensor:
        """The one definition of the timestep, for training and sampling alike (see the module
        docstring): [B] = masked fraction x 1000."""
        return mask_timestep(tokens, self.mask_id)

    def time_embedding(self, timestep: torch.Tensor) -> torch.Tensor:
        """timestep [B] (Meissonic's `timestep` argument) -> the timestep half of temb [B, D]."""
        emb = sinusoid(timestep.float() * TIMESTEP_SCALE, self.config.timestep_dim)
        return self.time_text_embed.timestep_embedder(emb.to(self.dtype))

    def image_rope(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """[2, h*w, head_dim / 2] cos, sin of the grid the transformer sees (cached per size)."""
        key = (h, w, device.type, device.index)
        table = self._rope_cache.get(key)
        if table is None:
            table = rope_table(grid_ids(h, w, device), self.config.axes_dims_rope, self.config.rope_theta)
            if not torch.is_inference_mode_enabled():  # an inference tensor cached would break training
                self._rope_cache[key] = table
        return table

    def prepare_text(self, text: TextEmbedding, micro_conds: torch.Tensor | None = None) -> TextContext:
        """Text half of temb, projected text states and their rotary table (module docstring).
        micro_conds [5] or [B, 5] (width, height, crop top, crop left, score); default the config's."""
        cfg = self.config
        if text.hidden.shape[-1] != cfg.text_dim or text.pooled.shape[-1] != cfg.pooled_dim:
            raise ConfigError(f"text embedding dims ({text.hidden.shape[-1]}, {text.pooled.shape[-1]}) "
                              f"do not match the model's (joint_attention_dim {cfg.text_dim}, "
                              f"pooled_projection_dim {cfg.pooled_dim})")
        dtype, (b, n) = self.dtype, text.hidden.shape[:2]
        micro = torch.tensor(cfg.micro_conds) if micro_conds is None else torch.as_tensor(micro_conds)
        micro = micro.to(text.pooled.device).float().expand(b, cfg.n_micro_conds)
        pooled = torch.cat([text.pooled.float(), sinusoid(micro.flatten(), cfg.micro_cond_encode_dim)
                            .view(b, -1)], dim=1).to(dtype)
        c = self.time_text_embed.text_embedder(self.cond_embed(pooled))
        states = self.encoder_proj_layer_norm(self.context_embedder(text.hidden.to(dtype)))
        ids = torch.zeros(n, len(cfg.axes_dims_rope), device=states.device)  # Meissonic's txt_ids
        rope = rope_table(ids, cfg.axes_dims_rope, cfg.rope_theta).unsqueeze(0).expand(b, -1, -1, -1)
        return TextContext(c, [(states[:, None], rope)], text.mask[:, None, None, :].bool())

    def forward(self, tokens: torch.Tensor, text: TextContext | TextEmbedding) -> torch.Tensor:
        """tokens [B, H, W] long -> logits [B, H, W, codebook_size]."""
        if self.config.downsample and (tokens.shape[1] % 2 or tokens.shape[2] % 2):
            raise ConfigError(f"token grid {tokens.shape[1]}x{tokens.shape[2]}: the downsample needs "
                              f"even sides")
        ctx = self.prepare_text(text) if isinstance(text, TextEmbedding) else text
        states, text_rope = ctx.kv[0]
        states = states[:, 0]
        temb = ctx.c + self.time_embedding(self.timestep(tokens))
        x = self.embed.layer_norm(self.embed.embeddings(tokens)).permute(0, 3, 1, 2)
        x = self.down_block(self.embed.conv(x))
        b, ch, h, w = x.shape
        x = self.project_to_hidden(self.project_to_hidden_norm(x.flatten(2).transpose(1, 2)))
        img_rope = self.image_rope(h, w, x.device)
        cos, sin = torch.cat([text_rope, img_rope.unsqueeze(0).expand(b, -1, -1, -1)], dim=2).unbind(1)
        rope = (cos[:, None], sin[:, None])  # broadcast over heads
        mask = torch.cat([ctx.mask, ctx.mask.new_ones(b, 1, 1, h * w)], dim=-1)
        for block in self.transformer_blocks:
            states, x = block(x, states, temb, rope, mask)
        n_text = states.shape[1]
        x = torch.cat([states, x], dim=1)
        for block in self.single_transformer_blocks:
            x = block(x, temb, rope, mask)
        x = self.project_from_hidden(self.project_from_hidden_norm(x[:, n_text:]))
        x = self.up_block(x.transpose(1, 2).reshape(b, ch, h, w))
        m = self.mlm_layer
        x = m.conv2(m.layer_norm(m.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return x.permute(0, 2, 3, 1)
