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
loss. The functions take velocity closures (sampling/trigflow.py), so the tests drive them
with exact Gaussian-mixture scores and small networks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..sampling.trigflow import SIGMA_D, T_MAX, Velocity, add_noise, denoise, flow_loss, sample_time


def dm_grad(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """(fake - real) / mean|x - real|, the mean over each sample's elements."""
    dims = tuple(range(1, x.dim()))
    weight = (x - real_x0).abs().mean(dims, keepdim=True).clamp_min(1e-8)
    return torch.nan_to_num((fake_x0 - real_x0) / weight)


def generator_loss(x: torch.Tensor, real: Velocity, fake: Velocity, generator: torch.Generator | None = None,
                   t_min: float = 0.02, t_max: float = 1.55) -> tuple[torch.Tensor, dict[str, float]]:
    """Distribution-matching surrogate for G's samples x (with their graph); t ~ U(t_min, t_max)."""
    b = len(x)
    with torch.no_grad():
        t = t_min + (t_max - t_min) * torch.rand(b, generator=generator)
        x_t = add_noise(x.detach(), t, SIGMA_D * torch.randn(x.shape, generator=generator))
        real_x0, fake_x0 = denoise(x_t, t, real(x_t, t)), denoise(x_t, t, fake(x_t, t))
        grad = dm_grad(x.detach(), real_x0, fake_x0)
    loss = 0.5 * F.mse_loss(x, (x - grad).detach())
    return loss, {"loss_dm": loss.item(), "dm_grad_norm": grad.flatten(1).norm(dim=1).mean().item()}


def fake_loss(x: torch.Tensor, fake: Velocity, generator: torch.Generator | None = None) -> torch.Tensor:
    """The fake denoiser's flow loss on G's (detached) samples, at the teacher's training times."""
    x = x.detach()
    t = sample_time(len(x), generator=generator)
    return flow_loss(fake, x, t, SIGMA_D * torch.randn(x.shape, generator=generator))


def student_times(steps: int) -> list[float]:
    """The few-step generator's times: pi/2 then evenly spaced down (DMD2's 4-step student
    uses a fixed schedule of this kind); one step is pi/2 alone."""
    return [T_MAX * (steps - i) / steps for i in range(steps)]


def few_step_sample(velocity: Velocity, z: torch.Tensor, times: list[float],
                    generator: torch.Generator | None = None, upto: int | None = None) -> torch.Tensor:
    """The student's sampler, a pure function: denoise z (std sigma_d) at times[0], re-noise the
    result to times[1], denoise, ... With `upto` = k, stop before step k and return its noisy
    input instead: DMD2's backward simulation (the generator trains on its own intermediate
    samples, not on noised real images)."""
    x = z
    for i, t in enumerate(times[:upto]):
        tt = torch.full((len(z),), t, dtype=z.dtype)
        if i > 0:
            x = add_noise(x, tt, SIGMA_D * torch.randn(z.shape, generator=generator, dtype=z.dtype))
        x = denoise(x, tt, velocity(x, tt))
    if upto is not None and 0 < upto < len(times):
        tt = torch.full((len(z),), times[upto], dtype=z.dtype)
        x = add_noise(x, tt, SIGMA_D * torch.randn(z.shape, generator=generator, dtype=z.dtype))
    return x
