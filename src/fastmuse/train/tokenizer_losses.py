"""Tokenizer losses: pixel reconstruction and an optional patch-GAN (hinge).

No perceptual (LPIPS/VGG) loss: its weights cannot be had offline here, and a feature
net of our own would first need training; L1 + L2 carry the reconstruction.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, l1: float, l2: float) -> torch.Tensor:
    return l1 * (recon - target).abs().mean() + l2 * (recon - target).pow(2).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix): one real/fake logit per ~receptive-field patch. GroupNorm instead
    of BatchNorm so that DDP ranks and tiny batches behave the same."""

    def __init__(self, channels: int = 64, layers: int = 3, in_channels: int = 3) -> None:
        super().__init__()
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            cout = channels * min(2**i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(c, cout, 4, stride, 1, bias=False), nn.GroupNorm(32, cout),
                     nn.LeakyReLU(0.2)]
            c = cout
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discriminator_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean())


def generator_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
