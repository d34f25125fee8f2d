"""VQ image tokenizer: conv encoder -> vector quantizer -> conv decoder.

The layer layout and parameter names follow diffusers' `VQModel` (norm_type "group"), so
aMUSEd/Meissonic `vqvae` weights load without renaming (see diffusers_vq.py); everything
else (EMA codebooks, l2 codes, our config) is ours. Images are [-1, 1]; tokens are
LongTensor[B, h, w] with h = H / downsample.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config, check_range, check_size
from ..errors import ConfigError
from ..hub import PretrainedMixin
from .quantizer import VectorQuantizer

EPS = 1e-6


@dataclass
class VQConfig(Config):
    kind = "vq_tokenizer"
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (32, 64, 128, 128)  # one block per level: f = 2^(n-1)
    layers_per_block: int = 1
    latent_channels: int = 32
    vq_embed_dim: int = 32
    num_vq_embeddings: int = 1024
    norm_num_groups: int = 32
    mid_block_add_attention: bool = True
    quantizer: Literal["st", "ema"] = "ema"
    l2_normalize: bool = False
    commitment_beta: float = 0.25
    ema_decay: float = 0.99
    # the pixel range the weights were trained on; encode/decode always speak [-1, 1]
    pixel_range: Literal["-1..1", "0..1"] = "-1..1"
    # how convolutions see past the image edge. "zeros" (VQGAN, diffusers) injects mid-grey
    # at the border, so a border token encodes "content next to grey" and the same content
    # gets other codes at the edge; "replicate" keeps a flat image flat at every layer, so
    # it encodes to one code everywhere.
    padding: Literal["zeros", "replicate"] = "zeros"
    # > 0: a patch (one token's f x f pixels) whose pixels all lie within this distance
    # (in [-1, 1] units, per channel) of the patch mean gets the code of a flat image of that
    # mean colour, wherever it lies: "white" becomes one code instead of ~170. A decoder
    # trained without it draws object edges from the white codes around them, so snapping
    # its tokens costs 3-4.5 dB (docs/masked-vs-ar.md); training with it shows the decoder
    # the snapped codes.
    flat_snap: float = 0.0

    later_keys = ("padding", "flat_snap")

    def validate(self) -> None:
        check_range("len(block_out_channels)", len(self.block_out_channels), 1, 6)
        check_range("layers_per_block", self.layers_per_block, 1, 8)
        check_range("num_vq_embeddings", self.num_vq_embeddings, 2, 1 << 20)
        check_range("ema_decay", self.ema_decay, 0.0, 1.0)
        check_range("flat_snap", self.flat_snap, 0.0, 2.0)
        for name in ("in_channels", "out_channels", "latent_channels", "vq_embed_dim", "norm_num_groups"):
            check_size(name, getattr(self, name))
        for c in self.block_out_channels:
            check_size("block_out_channels entry", c)
            if c % self.norm_num_groups:
                raise ConfigError(f"'block_out_channels' entry {c} is not a multiple of "
                                  f"norm_num_groups={self.norm_num_groups}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


def norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=EPS)


def conv3(cin: int, cout: int, padding: str) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, padding: str) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(cin, groups), conv3(cin, cout, padding)
        self.norm2, self.conv2 = norm(cout, groups), conv3(cout, cout, padding)
        self.conv_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.conv_shortcut(x) if self.conv_shortcut is not None else x) + h


class Attention(nn.Module):
    """Single-head self-attention over all positions, with a residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.group_norm = norm(channels, groups)
        self.to_q, self.to_k, self.to_v = (nn.Linear(channels, channels) for _ in range(3))
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).view(b, c, h * w).transpose(1, 2)
        q, k, v = (f(t).unsqueeze(1) for f in (self.to_q, self.to_k, self.to_v))
        o = F.scaled_dot_product_attention(q, k, v).squeeze(1)
        return x + self.to_out[0](o).transpose(1, 2).reshape(b, c, h, w)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool, padding: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups, padding)
                                      for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(channels, groups)] if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    def __init__(self, channels: int, padding: str) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)
        self.mode = "constant" if padding == "zeros" else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode=self.mode))  # asymmetric, as in VQGAN


class Upsample(nn.Module):
    def __init__(self, channels: int, padding: str) -> None:
        super().__init__()
        self.conv = conv3(channels, channels, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """Resnets at one resolution, then an optional resampler (`downsamplers`/`upsamplers`)."""

    def __init__(self, cins: list[int], cout: int, groups: int, resample: str | None,
                 padding: str) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(c, cout, groups, padding) for c in cins])
        if resample == "down":
            self.downsamplers = nn.ModuleList([Downsample(cout, padding)])
        elif resample == "up":
            self.upsamplers = nn.ModuleList([Upsample(cout, padding)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for r in self.resnets:
            x = r(x)
        for s in getattr(self, "downsamplers", []) or getattr(self, "upsamplers", []):
            x = s(x)
        return x


class Encoder(nn.Module):
    def __init__(self, c: VQConfig) -> None:
        super().__init__()
        ch, g, n, p = c.block_out_channels, c.norm_num_groups, c.layers_per_block, c.padding
        self.conv_in = conv3(c.in_channels, ch[0], p)
        self.down_blocks = nn.ModuleList([
            Level([ch[max(i - 1, 0)]] + [ch[i]] * (n - 1), ch[i], g,
                  "down" if i < len(ch) - 1 else None, p) for i in range(len(ch))])
        self.mid_block = MidBlock(ch[-1], g, c.mid_block_add_attention, p)
        self.conv_norm_out = norm(ch[-1], g)
        self.conv_out = conv3(ch[-1], c.latent_channels, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x))))


class Decoder(nn.Module):
    def __init__(self, c: VQConfig) -> None:
        super().__init__()
        ch, g, n, p = c.block_out_channels[::-1], c.norm_num_groups, c.layers_per_block, c.padding
        self.conv_in = conv3(c.latent_channels, ch[0], p)
        self.mid_block = MidBlock(ch[0], g, c.mid_block_add_attention, p)
        self.up_blocks = nn.ModuleList([
            Level([ch[max(i - 1, 0)]] + [ch[i]] * n, ch[i], g,
                  "up" if i < len(ch) - 1 else None, p) for i in range(len(ch))])
        self.conv_norm_out = norm(ch[-1], g)
        self.conv_out = conv3(ch[-1], c.out_channels, p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VQTokenizer(nn.Module, PretrainedMixin):
    config_class = VQConfig

    def __init__(self, config: VQConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.vq_embed_dim, 1)
        self.quantize = VectorQuantizer(config.num_vq_embeddings, config.vq_embed_dim,
                                        config.quantizer, config.commitment_beta,
                                        config.ema_decay, config.l2_normalize)
        self.post_quant_conv = nn.Conv2d(config.vq_embed_dim, config.latent_channels, 1)
        self.decoder = Decoder(config)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | Path) -> VQTokenizer:
        """A fastmuse tokenizer folder or bundled name, or a diffusers VQModel folder."""
        from .diffusers_vq import load_diffusers_vq, read_diffusers_config

        if Path(name_or_dir).is_dir() and read_diffusers_config(Path(name_or_dir)) is not None:
            return load_diffusers_vq(name_or_dir)
        return super().from_pretrained(name_or_dir)

    @property
    def codebook_size(self) -> int:
        return self.config.num_vq_embeddings

    @property
    def downsample(self) -> int:
        return self.config.downsample

    def _check_images(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise ValueError(f"images must be [B, {self.config.in_channels}, H, W], "
                             f"got {tuple(images.shape)}")
        f = self.downsample
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(f"image height and width must be multiples of {f} (the "
                             f"tokenizer's downsampling), got {tuple(images.shape[2:])}")
        return images if self.config.pixel_range == "-1..1" else (images + 1) / 2

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> continuous pre-quantisation latents [B,D,h,w]."""
        return self.quant_conv(self.encoder(self._check_images(images)))

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images [B,3,H,W] in [-1,1] -> token ids LongTensor[B, H/f, W/f]."""
        ids = self.quantize.indices(self.encode_latents(images))
        return self.snap_flat(images, ids) if self.config.flat_snap else ids

    def flat_patches(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(bool [B, h, w]: the patch is flat within `flat_snap`, its mean colour [B, 3, h, w])."""
        b, ch, hh, ww = images.shape
        f = self.downsample
        patches = images.reshape(b, ch, hh // f, f, ww // f, f)
        mean = patches.mean(dim=(3, 5))
        spread = (patches - mean[:, :, :, None, :, None]).abs().amax(dim=(1, 3, 5))
        return spread <= self.config.flat_snap, mean

    @torch.no_grad()
    def snap_flat(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """`ids` with every flat patch's code replaced by the code of a flat image of its
        colour (colours rounded to 8 bits, each distinct one encoded once)."""
        flat, mean = self.flat_patches(images)
        if not flat.any():
            return ids
        colours = ((mean.permute(0, 2, 3, 1)[flat] + 1) * 127.5).round()
        unique, which = colours.unique(dim=0, return_inverse=True)
        f = 2 * self.downsample  # 2x2 tokens: a norm needs more than one value per channel
        swatches = (unique / 127.5 - 1)[:, :, None, None].expand(-1, -1, f, f).contiguous()
        codes = self.quantize.indices(self.encode_latents(swatches))[:, 0, 0]
        ids = ids.clone()
        ids[flat] = codes[which]
        return ids

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Quantised (or any) latents [B,D,h,w] -> images [B,3,H,W] (about [-1,1])."""
        x = self.decoder(self.post_quant_conv(latents))
        return x if self.config.pixel_range == "-1..1" else x * 2 - 1

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token ids [B,h,w] -> images [B,3,H,W] (about [-1,1]; clamp before display)."""
        if tokens.ndim != 3:
            raise ValueError(f"tokens must be [B, h, w], got {tuple(tokens.shape)}")
        return self.decode_latents(self.quantize.lookup(tokens))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, quantiser loss, token ids). With `flat_snap` the
        decoder sees the flat patches' snapped codes, so it learns to draw every edge from
        the codes of the patches the edge crosses."""
        zq, qloss, ids = self.quantize(self.encode_latents(images))
        if self.config.flat_snap:
            snapped = self.snap_flat(images, ids)
            zq = torch.where((snapped != ids)[:, None], self.quantize.lookup(snapped).to(zq.dtype), zq)
            ids = snapped
        return self.decode_latents(zq), qloss, ids
