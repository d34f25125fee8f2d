"""DMD / DMD2 (Yin et al. 2024): distribution matching distillation of a TrigFlow diffusion
model into a one- or few-step generator G.

For a sample x = G(noise, text), noise it to a random time t and compare two denoisers there:
the real one (the frozen teacher, with guidance) and a fake one trained online, with the
teacher's own flow loss, on G's samples (so it denoises towards G's distribution). The
generator moves x along

    grad = (fake_x0 - real_x0) / mean|x - real_x0|     (per sample: DMD's normalisation)

the gradient of KL(p_G || p_data) averaged over noise levels; the surrogate
0.5 |x - sg(x - grad)|^2 has exactly that gradient w.r.t. x. DMD2 updates the fake denoiser
several times per generator update (two time scales) instead of adding DMD1's regression
loss, and adds a GAN: a small head on the fake denoiser's features tells noised real images
from noised G samples (non-saturating losses). The functions take closures (velocity, or
logits of noised images), so the tests drive them with exact Gaussian-mixture scores and
small networks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..sampling.noise import random
from ..sampling.trigflow import SIGMA_D, Velocity, add_noise, denoise, flow_loss, sample_time


def dm_grad(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """(fake - real) / mean|x - real|, the mean over each sample's elements."""
    dims = tuple(range(1, x.dim()))
    weight = (x - real_x0).abs().mean(dims, keepdim=True).clamp_min(1e-8)
    return torch.nan_to_num((fake_x0 - real_x0) / weight)


def uniform_times(n: int, lo: float, hi: float, generator: torch.Generator | None,
                  device: torch.device) -> torch.Tensor:
    """n TrigFlow times t ~ U(lo, hi)."""
    return lo + (hi - lo) * random((n,), generator, device)


def generator_loss(x: torch.Tensor, real: Velocity, fake: Velocity, generator: torch.Generator | None = None,
                   t_min: float = 0.02, t_max: float = 1.55) -> tuple[torch.Tensor, dict[str, float]]:
    """Distribution-matching surrogate for G's samples x (with their graph); t ~ U(t_min, t_max)."""
    b = len(x)
    with torch.no_grad():
        t = uniform_times(b, t_min, t_max, generator, x.device)
        x_t = add_noise(x.detach(), t, SIGMA_D * random(x.shape, generator, x.device, normal=True))
        real_x0, fake_x0 = denoise(x_t, t, real(x_t, t)), denoise(x_t, t, fake(x_t, t))
        grad = dm_grad(x.detach(), real_x0, fake_x0)
    loss = 0.5 * F.mse_loss(x, (x - grad).detach())
    return loss, {"loss_dm": loss.item(), "dm_grad_norm": grad.flatten(1).norm(dim=1).mean().item()}


def fake_loss(x: torch.Tensor, fake: Velocity, generator: torch.Generator | None = None,
              times: tuple[float, float] | None = None) -> torch.Tensor:
    """The fake denoiser's flow loss on G's (detached) samples, at the teacher's training times
    or, given `times` (lo, hi), at t ~ U(lo, hi)."""
    x = x.detach()
    if times is None:
        t = sample_time(len(x), generator=generator).to(x.device)
    else:
        t = uniform_times(len(x), *times, generator, x.device)
    return flow_loss(fake, x, t, SIGMA_D * random(x.shape, generator, x.device, normal=True))


Logits = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> one logit per sample


class DiscriminatorHead(nn.Module):
    """DMD2's GAN classifier on the fake denoiser's features [B, N, dim]: a per-token MLP, its
    logits averaged into one per image. Zero-initialised output: it starts undecided."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).mean((1, 2))


def _noised(x: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    t = sample_time(len(x), generator=generator).to(x.device)
    return add_noise(x, t, SIGMA_D * random(x.shape, generator, x.device, normal=True)), t


def gan_generator_loss(x: torch.Tensor, logits: Logits, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """Non-saturating generator loss softplus(-D(x_t)) on G's samples x (with their graph)."""
    return F.softplus(-logits(*_noised(x, generator))).mean()


def gan_discriminator_loss(real: torch.Tensor, l_fake: torch.Tensor, logits: Logits,
                           generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """softplus(D(fake_t)) + softplus(-D(real_t)), the real images noised at the teacher's
    training times; `l_fake` are the logits of noised G samples (the trainer reuses the fake
    denoiser's forward pass of its flow loss for them)."""
    l_real = logits(*_noised(real, generator))
    loss = F.softplus(-l_real).mean() + F.softplus(l_fake).mean()
    return loss, {"loss_disc": loss.item(), "disc_real": torch.sigmoid(l_real).mean().item(),
                  "disc_fake": torch.sigmoid(l_fake).mean().item()}
