"""DMD on a 2-D mixture of 8 Gaussians, before any image: the TrigFlow helpers, the
distribution-matching gradient, and one-step generators trained against the exact score and
against a learned teacher, each with a learned fake score."""

import math

import pytest
import torch
from torch import nn

from fastmuse.distill.dmd import dm_grad, fake_loss, generator_loss
from fastmuse.sampling.trigflow import (
    SIGMA_D,
    add_noise,
    denoise,
    few_step_sample,
    flow_loss,
    ode_sample,
    sample_time,
    student_times,
    velocity_target,
)
from mixture import WEIGHTS, VelocityNet, exact_velocity, mixture, mmd, mode_masses


def test_trigflow_identities_and_exact_ode():
    gen = torch.Generator().manual_seed(0)
    x0, z = torch.randn(5, 2, generator=gen), SIGMA_D * torch.randn(5, 2, generator=gen)
    t = torch.rand(5, generator=gen) * math.pi / 2
    x_t = add_noise(x0, t, z)
    assert torch.allclose(denoise(x_t, t, velocity_target(x0, t, z)), x0, atol=1e-6)
    ts = sample_time(20000, generator=gen)
    assert 0 < ts.min() and ts.max() < math.pi / 2
    assert abs(torch.log(ts.tan() * SIGMA_D).mean().item() + 1.0) < 0.05  # tau ~ N(-1, 1.4)
    # the probability-flow ODE with the exact velocity carries noise to the mixture
    samples = ode_sample(exact_velocity, SIGMA_D * torch.randn(4000, 2, generator=gen), steps=40,
                         t_min=1e-3)
    data = mixture(4000, gen)
    assert (mode_masses(samples) - WEIGHTS).abs().max() < 0.02
    assert mmd(samples, data) < 3 * mmd(mixture(4000, gen), data) + 2e-3
    with pytest.raises(ValueError, match="solver"):
        ode_sample(exact_velocity, samples, steps=2, solver="rk4")


def test_dm_grad_is_normalised_difference():
    x = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    real, fake = torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert torch.allclose(dm_grad(x, real, fake), torch.tensor([[1.0, 0.0], [0.0, 1.0]]))


def test_dm_times_and_fake_times_bound_where_each_loss_is_taken():
    """generator_loss noises G's samples only at times in [t_min, t_max] (DMDConfig.dm_times),
    fake_loss at the given times (DMDConfig.fake_times) or, without them, at the teacher's."""
    from fastmuse.distill.dmd_train import DMDConfig
    from fastmuse.errors import ConfigError

    seen = []

    def zero(x_t, t):
        seen.append(t)
        return torch.zeros_like(x_t)

    x = torch.randn(512, 2, requires_grad=True)
    generator_loss(x, zero, zero, torch.Generator().manual_seed(0), 1.1, 1.5)
    fake_loss(x, zero, torch.Generator().manual_seed(0), (0.8, 1.2))
    fake_loss(x, zero, torch.Generator().manual_seed(0))
    gen_t, _, fake_t, teacher_t = (t.flatten() for t in seen)  # generator_loss asks real and fake
    assert 1.1 <= gen_t.min() < 1.12 and 1.48 < gen_t.max() <= 1.5
    assert 0.8 <= fake_t.min() < 0.82 and 1.18 < fake_t.max() <= 1.2
    assert teacher_t.min() < 0.5 and teacher_t.max() > 1.3  # the log-normal's wide spread
    for bad in ((0.0, 1.0), (1.2, 1.1), (0.5, 1.6), (0.5,), "0.8, 1.5"):
        for name in ("dm_times", "fake_times"):
            with pytest.raises(ConfigError,
                               match=rf"{name} is .*; accepted: two numbers lo, hi with 0 < lo < hi < pi/2"):
                DMDConfig(**{name: bad})


def train_one_step_generator(real, gen: torch.Generator, steps: int) -> nn.Module:
    """DMD2-style: five fake-score updates per generator update, no regression loss."""
    g_net = nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 2))
    fake = VelocityNet()
    opt_g, opt_f = torch.optim.Adam(g_net.parameters(), 1e-3), torch.optim.Adam(fake.parameters(), 1e-3)
    for _ in range(steps):
        for _ in range(5):
            with torch.no_grad():
                x = g_net(torch.randn(256, 2, generator=gen))
            loss = fake_loss(x, fake, gen)
            opt_f.zero_grad()
            loss.backward()
            opt_f.step()
        loss, _ = generator_loss(g_net(torch.randn(256, 2, generator=gen)), real, fake, gen)
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
    return g_net


@pytest.mark.parametrize("teacher", ["exact", "learned"])
def test_one_step_generator_covers_every_mode(teacher):
    """Each mode's mass within 3 points of the truth, and an MMD to the data under half that of
    the best single Gaussian (what a blurred generator gets near; 0.34 of it here)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    real = exact_velocity
    if teacher == "learned":  # a diffusion teacher trained on samples, frozen
        real = VelocityNet()
        opt = torch.optim.Adam(real.parameters(), 2e-3)
        decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3000)
        for _ in range(3000):  # its own ODE samples then have every mode's mass within 0.01
            x0 = mixture(512, gen)
            z = SIGMA_D * torch.randn(512, 2, generator=gen)
            loss = flow_loss(real, x0, sample_time(512, generator=gen), z)
            opt.zero_grad()
            loss.backward()
            opt.step()
            decay.step()
        real.requires_grad_(False)
    g_net = train_one_step_generator(real, gen, steps=1500)
    with torch.no_grad():
        samples = g_net(torch.randn(4000, 2, generator=torch.Generator().manual_seed(1)))
    data = mixture(4000, torch.Generator().manual_seed(2))
    gaussian = data.mean(0) + torch.randn(4000, 2, generator=gen) @ torch.linalg.cholesky(data.T.cov()).T
    assert (mode_masses(samples) - WEIGHTS).abs().max() < 0.03, mode_masses(samples)
    assert mmd(samples, data) < 0.5 * mmd(gaussian, data), (mmd(samples, data), mmd(gaussian, data))


def test_few_step_sampler_and_backward_simulation():
    assert student_times(1) == [math.pi / 2] and len(student_times(4)) == 4
    gen = torch.Generator().manual_seed(0)
    z = SIGMA_D * torch.randn(3000, 2, generator=gen)
    # with the exact velocity, every step's denoised estimate is E[x0 | x_t]: four steps of
    # denoise-and-renoise end near the data, one step at the mean
    one = few_step_sample(exact_velocity, z, student_times(1), gen)
    four = few_step_sample(exact_velocity, z, student_times(4), gen)
    assert one.norm(dim=1).mean() < 0.1 and four.norm(dim=1).mean() > 0.5
    # backward simulation: the input of step k is the student's own sample noised to times[k]
    x2 = few_step_sample(exact_velocity, z, student_times(4), torch.Generator().manual_seed(5), upto=2)
    assert x2.shape == z.shape and not torch.allclose(x2, four)
