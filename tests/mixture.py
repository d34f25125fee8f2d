"""A 2-D mixture of 8 Gaussians with its exact TrigFlow velocity: the toy problem on which the
DMD and sCM tests check each method before any image."""

import math

import torch
from torch import nn

from fastmuse.sampling.trigflow import SIGMA_D

WEIGHTS = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.05, 0.1, 0.15, 0.2])
ANGLES = torch.arange(8) * 2 * math.pi / 8
MEANS = 0.7 * torch.stack([ANGLES.cos(), ANGLES.sin()], 1)
SPREAD = 0.1  # each component's standard deviation


def mixture(n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(WEIGHTS, n, True, generator=gen)
    return MEANS[k] + SPREAD * torch.randn(n, 2, generator=gen)


def exact_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """dx_t/dt of the mixture's probability-flow ODE: from E[x0 | x_t] in closed form (each
    component stays Gaussian under x_t = cos(t) x0 + sin(t) z)."""
    c, s = t.cos()[:, None], t.sin()[:, None]
    var = c**2 * SPREAD**2 + s**2 * SIGMA_D**2
    d = x[:, None, :] - c[:, None] * MEANS[None]
    resp = (WEIGHTS.log()[None] - d.pow(2).sum(-1) / (2 * var)).softmax(-1)
    x0 = (resp[..., None] * (MEANS[None] + (c * SPREAD**2 / var)[:, None] * d)).sum(1)
    return (c * x - x0) / s


class VelocityNet(nn.Module):
    """A small time-conditioned MLP in the TrigFlow form v = sigma_d F(x / sigma_d, t)."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 2))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, 5)
        feats = torch.cat([x / SIGMA_D, torch.sin(t[:, None] * k), torch.cos(t[:, None] * k)], 1)
        return SIGMA_D * self.net(feats)


def mode_masses(x: torch.Tensor) -> torch.Tensor:
    return torch.bincount(torch.cdist(x, MEANS).argmin(1), minlength=8).float() / len(x)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidth: float = 0.1) -> float:
    def k(a, b):
        return torch.exp(-torch.cdist(a, b).pow(2) / (2 * bandwidth**2)).mean()
    return (k(x, x) + k(y, y) - 2 * k(x, y)).item()
