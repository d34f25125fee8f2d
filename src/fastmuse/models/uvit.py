"""aMUSEd's U-ViT masked transformer (diffusers `UVit2DModel`), written for fastmuse.

    tokens [B, H, W] -> embedding (RMSNorm, 1x1 conv) -> down block -> [optional 2x downsample]
      -> RMSNorm, Linear to `hidden_size` -> num_hidden_layers x TransformerLayer
      -> RMSNorm, Linear back -> up block -> [optional 2x upsample] -> 1x1 conv MLM head
    down/up block: num_res_blocks x (ConvNeXt block modulated by the conditioning,
                                     two cross-attentions to the text, no feed-forward)
    TransformerLayer: self-attn, cross-attn, GEGLU MLP; each after an adaptive norm whose
                      scale/shift come from the conditioning vector

    conditioning = MLP([pooled CLIP text embedding, sinusoidal(micro-conditions)])
    micro-conditions: original width, height, crop x, crop y, aesthetic score

Parameter names are diffusers', so an aMUSEd `transformer/` folder's state dict loads with
the identity key table (models/from_diffusers.py reads the folder). As in our own transformer,
`prepare_text` computes every cross-attention's keys/values once per prompt, and the
sampler reuses them at every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import check_size
from ..errors import ConfigError
from ..hub import PretrainedMixin
from ..text.encoders import TextEmbedding
from .layers import ReferenceConfig, Resample, RMSNorm, TwoLayerMLP, sinusoid
from .transformer import TextContext


@dataclass
class UViTConfig(ReferenceConfig):
    """diffusers' UVit2DModel arguments (same names) + what fastmuse's pipeline needs."""

    kind = "uvit"
    hidden_size: int = 1024
    use_bias: bool = False
    cond_embed_dim: int = 768  # pooled text width
    micro_cond_encode_dim: int = 256  # sinusoid width per micro-condition
    micro_cond_embed_dim: int = 1280  # 5 micro-conditions x micro_cond_encode_dim
    encoder_hidden_size: int = 768  # per-token text width
    vocab_size: int = 8256  # codebook + MASK (the last id), rounded up
    codebook_size: int = 8192
    in_channels: int = 768
    block_out_channels: int = 768
    num_res_blocks: int = 3
    downsample: bool = False
    upsample: bool = False
    block_num_heads: int = 12
    num_hidden_layers: int = 22
    num_attention_heads: int = 16
    intermediate_size: int = 2816
    layer_norm_eps: float = 1e-6
    ln_elementwise_affine: bool = True
    sample_size: int = 16  # tokens per side
    # fastmuse's side
    micro_conds: tuple[float, ...] = (256.0, 256.0, 0.0, 0.0, 6.0)  # aMUSEd's sampling default
    text_encoder: str = "text_encoder"  # a folder beside the transformer's, or an encoder name
    tokenizer: str = "vqvae"
    resolution: int = 256

    def validate(self) -> None:
        for name in ("hidden_size", "cond_embed_dim", "micro_cond_encode_dim", "encoder_hidden_size",
                     "vocab_size", "codebook_size", "in_channels", "block_out_channels", "block_num_heads",
                     "num_attention_heads", "intermediate_size", "sample_size", "resolution"):
            check_size(name, getattr(self, name))
        check_size("num_res_blocks", self.num_res_blocks, 0)
        check_size("num_hidden_layers", self.num_hidden_layers, 0)
        self.check_vocab()
        if len(self.micro_conds) * self.micro_cond_encode_dim != self.micro_cond_embed_dim:
            raise ConfigError(f"'micro_cond_embed_dim' is {self.micro_cond_embed_dim}; accepted: "
                              f"len(micro_conds) x micro_cond_encode_dim = "
                              f"{len(self.micro_conds) * self.micro_cond_encode_dim}")
        for name, dim, heads in (("hidden_size", self.hidden_size, self.num_attention_heads),
                                 ("block_out_channels", self.block_out_channels, self.block_num_heads)):
            if dim % heads:
                raise ConfigError(f"'{name}' is {dim}; accepted: a multiple of its head count ({heads})")

    @property
    def text_dim(self) -> int:
        return self.encoder_hidden_size

    @property
    def pooled_dim(self) -> int:
        return self.cond_embed_dim

    def for_data(self, codebook_size: int, grid: int, text_dim: int, pooled_dim: int, text_encoder: str,
                 tokenizer: str) -> UViTConfig:
        """This architecture sized for a tokenizer's codes and grid and a text encoder's widths."""
        return self.replace(codebook_size=codebook_size, vocab_size=codebook_size + 1, sample_size=grid,
                            encoder_hidden_size=text_dim, cond_embed_dim=pooled_dim,
                            text_encoder=text_encoder, tokenizer=tokenizer)

    def describe(self) -> str:
        """One markdown line for model cards."""
        return (f"aMUSEd U-ViT: width {self.hidden_size}, {self.num_hidden_layers} adaptive-norm transformer "
                f"layers between ConvNeXt + cross-attention blocks of {self.block_out_channels} channels "
                f"(x{self.num_res_blocks}){', 2x down/up sampling' if self.downsample else ''}")


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = t.shape
    return t.view(b, n, heads, d // heads).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention; cross-attention keys/values come precomputed (`text_kv`)."""

    def __init__(self, dim: int, heads: int, kv_dim: int, bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(kv_dim, dim, bias=bias)
        self.to_v = nn.Linear(kv_dim, dim, bias=bias)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim, bias=bias)])  # diffusers' name: to_out.0

    def text_kv(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _heads(self.to_k(states), self.heads), _heads(self.to_v(states), self.heads)

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, d = x.shape
        k, v = self.text_kv(x) if kv is None else kv
        a = F.scaled_dot_product_attention(_heads(self.to_q(x), self.heads), k, v, attn_mask=mask)
        return self.to_out[0](a.transpose(1, 2).reshape(b, n, d))


class AdaNorm(nn.Module):
    """norm(x) * (1 + scale) + shift, scale/shift from the conditioning vector."""

    def __init__(self, dim: int, cond_dim: int, norm: nn.Module, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, 2 * dim, bias=bias)
        self.norm = norm

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(c)).chunk(2, dim=-1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class GEGLU(nn.Module):
    def __init__(self, dim: int, inner: int, bias: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, 2 * inner, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)
        return h * F.gelu(gate)


class TransformerLayer(nn.Module):
    def __init__(self, cfg: UViTConfig) -> None:
        super().__init__()
        d, eps, affine, bias = cfg.hidden_size, cfg.layer_norm_eps, cfg.ln_elementwise_affine, cfg.use_bias
        self.norm1 = AdaNorm(d, d, RMSNorm(d, eps, affine), bias)
        self.attn1 = Attention(d, cfg.num_attention_heads, d, bias)
        self.norm2 = AdaNorm(d, d, RMSNorm(d, eps, affine), bias)
        self.attn2 = Attention(d, cfg.num_attention_heads, d, bias)
        self.norm3 = AdaNorm(d, d, nn.LayerNorm(d, eps, affine, bias=bias), bias)
        # diffusers' FeedForward: net.0 = GEGLU, net.1 = dropout, net.2 = output projection
        self.ff = nn.Module()
        self.ff.net = nn.ModuleList([GEGLU(d, cfg.intermediate_size, bias), nn.Identity(),
                                     nn.Linear(cfg.intermediate_size, d, bias=bias)])

    def cross_attentions(self) -> list[Attention]:
        return [self.attn2]

    def forward(self, x: torch.Tensor, c: torch.Tensor, kvs: list, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x, c))
        x = x + self.attn2(self.norm2(x, c), kvs[0], mask)
        h = self.norm3(x, c)
        for layer in self.ff.net:
            h = layer(h)
        return x + h


class ConvNextBlock(nn.Module):
    def __init__(self, ch: int, cfg: UViTConfig) -> None:
        super().__init__()
        bias = cfg.use_bias
        self.depthwise = nn.Conv2d(ch, ch, 3, padding=1, groups=ch, bias=bias)
        self.norm = RMSNorm(ch, cfg.layer_norm_eps, cfg.ln_elementwise_affine)
        self.channelwise_linear_1 = nn.Linear(ch, 4 * ch, bias=bias)
        self.channelwise_norm = GlobalResponseNorm(4 * ch)
        self.channelwise_linear_2 = nn.Linear(4 * ch, ch, bias=bias)
        self.cond_embeds_mapper = nn.Linear(cfg.hidden_size, 2 * ch, bias=bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.depthwise(x).permute(0, 2, 3, 1))
        h = self.channelwise_linear_2(self.channelwise_norm(F.gelu(self.channelwise_linear_1(h))))
        x = x + h.permute(0, 3, 1, 2)
        scale, shift = self.cond_embeds_mapper(F.silu(c)).chunk(2, dim=1)
        return x * (1 + scale[:, :, None, None]) + shift[:, :, None, None]


class GlobalResponseNorm(nn.Module):
    """ConvNeXt-V2's GRN over channels-last maps."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        return self.gamma * (x * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6))) + self.beta + x


class ConvAttentionBlock(nn.Module):
    """diffusers' SkipFFTransformerBlock: two cross-attentions to the text, no feed-forward."""

    def __init__(self, ch: int, cfg: UViTConfig) -> None:
        super().__init__()
        bias = cfg.use_bias
        self.kv_mapper = nn.Linear(cfg.hidden_size, ch, bias=bias) if ch != cfg.hidden_size else None
        self.norm1 = RMSNorm(ch, 1e-6)
        self.attn1 = Attention(ch, cfg.block_num_heads, ch, bias)
        self.norm2 = RMSNorm(ch, 1e-6)
        self.attn2 = Attention(ch, cfg.block_num_heads, ch, bias)

    def cross_attentions(self) -> list[Attention]:
        return [self.attn1, self.attn2]

    def text_states(self, states: torch.Tensor) -> torch.Tensor:
        return states if self.kv_mapper is None else self.kv_mapper(F.silu(states))

    def forward(self, x: torch.Tensor, kvs: list, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x), kvs[0], mask)
        return x + self.attn2(self.norm2(x), kvs[1], mask)


class UViTBlock(nn.Module):
    def __init__(self, cfg: UViTConfig, downsample: bool = False, upsample: bool = False) -> None:
        super().__init__()
        ch = cfg.block_out_channels
        self.downsample = Resample(ch, cfg, up=False) if downsample else None
        self.res_blocks = nn.ModuleList(ConvNextBlock(ch, cfg) for _ in range(cfg.num_res_blocks))
        self.attention_blocks = nn.ModuleList(ConvAttentionBlock(ch, cfg) for _ in range(cfg.num_res_blocks))
        self.upsample = Resample(ch, cfg, up=True) if upsample else None

    def forward(self, x: torch.Tensor, c: torch.Tensor, kvs: list, mask: torch.Tensor) -> torch.Tensor:
        if self.downsample is not None:
            x = self.downsample(x)
        for i, (res, attn) in enumerate(zip(self.res_blocks, self.attention_blocks, strict=True)):
            x = res(x, c)
            b, ch, h, w = x.shape
            seq = attn(x.flatten(2).transpose(1, 2), kvs[2 * i:2 * i + 2], mask)
            x = seq.transpose(1, 2).reshape(b, ch, h, w)
        return x if self.upsample is None else self.upsample(x)


class UViT(PretrainedMixin, nn.Module):
    config_class = UViTConfig

    def __init__(self, config: UViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        eps, affine, bias = cfg.layer_norm_eps, cfg.ln_elementwise_affine, cfg.use_bias
        d, ch = cfg.hidden_size, cfg.block_out_channels
        self.encoder_proj = nn.Linear(cfg.encoder_hidden_size, d, bias=bias)
        self.encoder_proj_layer_norm = RMSNorm(d, eps, affine)
        self.embed = nn.Module()
        self.embed.embeddings = nn.Embedding(cfg.vocab_size, cfg.in_channels)
        self.embed.layer_norm = RMSNorm(cfg.in_channels, eps, affine)
        self.embed.conv = nn.Conv2d(cfg.in_channels, ch, 1, bias=bias)
        self.cond_embed = TwoLayerMLP(cfg.micro_cond_embed_dim + cfg.cond_embed_dim, d, bias=bias)
        self.down_block = UViTBlock(cfg, downsample=cfg.downsample)
        self.project_to_hidden_norm = RMSNorm(ch, eps, affine)
        self.project_to_hidden = nn.Linear(ch, d, bias=bias)
        self.transformer_layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.project_from_hidden_norm = RMSNorm(d, eps, affine)
        self.project_from_hidden = nn.Linear(d, ch, bias=bias)
        self.up_block = UViTBlock(cfg, upsample=cfg.upsample)
        self.mlm_layer = nn.Module()
        self.mlm_layer.conv1 = nn.Conv2d(ch, cfg.in_channels, 1, bias=bias)
        self.mlm_layer.layer_norm = RMSNorm(cfg.in_channels, eps, affine)
        self.mlm_layer.conv2 = nn.Conv2d(cfg.in_channels, cfg.codebook_size, 1, bias=bias)

    @property
    def mask_id(self) -> int:
        return self.config.mask_id

    def prepare_text(self, text: TextEmbedding, micro_conds: torch.Tensor | None = None) -> TextContext:
        """Conditioning vector + every cross-attention's keys/values, in forward order.
        micro_conds [5] or [B, 5] (width, height, crop x, crop y, score); default the config's."""
        cfg = self.config
        if text.hidden.shape[-1] != cfg.text_dim or text.pooled.shape[-1] != cfg.pooled_dim:
            raise ConfigError(f"text embedding dims ({text.hidden.shape[-1]}, {text.pooled.shape[-1]}) "
                              f"do not match the model's (encoder_hidden_size {cfg.text_dim}, "
                              f"cond_embed_dim {cfg.pooled_dim})")
        dtype, b = self.dtype, len(text)
        micro = torch.tensor(cfg.micro_conds) if micro_conds is None else torch.as_tensor(micro_conds)
        micro = micro.to(text.pooled.device).float().expand(b, len(cfg.micro_conds))
        pooled = torch.cat([text.pooled.float(), sinusoid(micro.flatten(), cfg.micro_cond_encode_dim)
                            .view(b, -1)], dim=1).to(dtype)
        c = self.cond_embed(pooled)
        states = self.encoder_proj_layer_norm(self.encoder_proj(text.hidden.to(dtype)))
        kv = []
        down, up = self.down_block.attention_blocks, self.up_block.attention_blocks
        for block in (*down, *self.transformer_layers, *up):
            mapped = block.text_states(states) if isinstance(block, ConvAttentionBlock) else states
            kv += [attn.text_kv(mapped) for attn in block.cross_attentions()]
        return TextContext(c, kv, text.mask[:, None, None, :].bool())

    def forward(self, tokens: torch.Tensor, text: TextContext | TextEmbedding) -> torch.Tensor:
        """tokens [B, H, W] long -> logits [B, H, W, codebook_size]."""
        ctx = self.prepare_text(text) if isinstance(text, TextEmbedding) else text
        kv, mask, c = iter(ctx.kv), ctx.mask, ctx.c
        n_down = 2 * len(self.down_block.attention_blocks)
        x = self.embed.layer_norm(self.embed.embeddings(tokens)).permute(0, 3, 1, 2)
        x = self.down_block(self.embed.conv(x), c, [next(kv) for _ in range(n_down)], mask)
        b, ch, h, w = x.shape
        x = self.project_to_hidden(self.project_to_hidden_norm(x.flatten(2).transpose(1, 2)))
        for layer in self.transformer_layers:
            x = layer(x, c, [next(kv)], mask)
        x = self.project_from_hidden(self.project_from_hidden_norm(x))
        x = self.up_block(x.transpose(1, 2).reshape(b, ch, h, w), c, list(kv), mask)
        m = self.mlm_layer
        x = m.conv2(m.layer_norm(m.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        return x.permute(0, 2, 3, 1)
