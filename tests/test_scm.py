"""sCM on the 2-D mixture of 8 Gaussians, before any image: the forward-mode tangent against
finite differences (a small MLP and a DiT with attention), each stabiliser, the non-finite
guard, and 1- and 2-step samples of sCT (from data) and sCD (from the exact-score teacher)."""

import math
import warnings

import pytest
import torch

from fastmuse.distill.scm import (
    AdaptiveWeight,
    SCMSettings,
    TangentDrift,
    check_finite,
    consistency_tangent,
    consistency_times,
    scm_loss,
    velocity_jvp,
)
from fastmuse.errors import FastMuseError
from fastmuse.sampling.trigflow import (
    SIGMA_D,
    add_noise,
    denoise,
    few_step_sample,
    sample_time,
    velocity_target,
)
from mixture import WEIGHTS, VelocityNet, exact_velocity, mixture, mmd, mode_masses
from test_dit import text, tiny


def finite_difference_tangent(velocity, x_t, t, dxdt, h=1e-3):
    """cos(t) df/dt by central differences of f along the ODE's direction (dx_t/dt, 1)."""
    def f(dt):
        x, tt = x_t + dt * dxdt, t + dt
        return denoise(x, tt, velocity(x, tt))
    return t.cos().view(-1, *[1] * (x_t.dim() - 1)) * (f(h) - f(-h)) / (2 * h)


def test_jvp_tangent_matches_finite_differences():
    gen = torch.Generator().manual_seed(0)
    net = VelocityNet().double()
    x_t, t = torch.randn(64, 2, generator=gen, dtype=torch.float64), 0.1 + 1.3 * torch.rand(64, generator=gen)
    t = t.double()
    dxdt = exact_velocity(x_t, t)
    v, dv = velocity_jvp(net, x_t, t, dxdt)
    jvp_g = consistency_tangent(x_t, t, v, dv, dxdt)
    assert (jvp_g - finite_difference_tangent(net, x_t, t, dxdt)).abs().max() < 1e-3


@pytest.mark.parametrize("text_path", [{}, {"rope": True, "text_layers": 1, "text_positions": 3}])
def test_jvp_through_the_dit_matches_finite_differences(text_path):
    """Through attention (the DiT's fused SDPA has no forward-mode rule: math kernel inside the
    JVP), with the learned position table, and with the teacher's RoPE and caption layers."""
    gen = torch.Generator().manual_seed(0)
    model = tiny(**text_path)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    ctx = model.prepare_text(text(torch.tensor([0, 1, 0, 1])))
    velocity = lambda x, tt: model.velocity(x, tt, ctx)  # noqa: E731
    x_t, t = torch.randn(4, 3, 16, 16, generator=gen), torch.tensor([0.2, 0.7, 1.0, 1.4])
    dxdt = torch.randn(x_t.shape, generator=gen)
    v, dv = velocity_jvp(velocity, x_t, t, dxdt)
    assert torch.allclose(v, velocity(x_t, t), atol=1e-5)
    jvp_g = consistency_tangent(x_t, t, v, dv, dxdt)
    assert (jvp_g - finite_difference_tangent(velocity, x_t, t, dxdt, h=1e-2)).abs().max() < 1e-3


def test_tangent_drift_warns_once_when_the_norm_climbs():
    drift = TangentDrift(start=10, span=20, warn=1.6, window=4)
    assert drift.add(5, 100.0) is None  # in the warm-up: ignored
    level = zip((15, 20, 25, 30), (8.0, 9.0, 12.0, 9.0), strict=True)
    assert all(drift.add(s, n) is None for s, n in level)  # the reference level: median 9
    assert drift.add(35, float("nan")) is None and drift.add(40, None) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning while it holds
        assert [drift.add(s, 9.0) for s in (45, 50, 55)] == [None, None, None]  # until a full window
        assert drift.add(60, 9.0) == 1.0
    with pytest.warns(UserWarning, match="tangent norm is 2.5x"):
        ratios = [drift.add(s, 36.0) for s in (65, 70, 75)]
    assert ratios == [1.0, 2.5, 4.0]  # medians of the last 4 logged norms over 9
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run
        drift.add(80, 50.0)


def test_stabilisers_and_guard():
    gen = torch.Generator().manual_seed(0)
    net = VelocityNet()
    x0, z = mixture(256, gen), SIGMA_D * torch.randn(256, 2, generator=gen)
    t = sample_time(256, generator=gen)
    x_t, dxdt = add_noise(x0, t, z), velocity_target(x0, t, z)
    # the loss at theta = theta^- is ||g_hat||^2 / D: normalised tangents have norm < 1
    loss, logs = scm_loss(net, x_t, t, dxdt, step=10, settings=SCMSettings(warmup=0, adaptive_weight=False))
    assert logs["ramp"] == 1.0 and loss.item() < 0.5 and logs["tangent_max"] > 0
    raw, _ = scm_loss(net, x_t, t, dxdt, 10, SCMSettings(tangent_norm=0, warmup=0, adaptive_weight=False))
    v, dv = velocity_jvp(net, x_t, t, dxdt)
    unnormalised = consistency_tangent(x_t, t, v, dv, dxdt).pow(2).mean().item()
    assert math.isclose(raw.item(), unnormalised, rel_tol=1e-4)
    # warm-up: at step 0 only the first term of the tangent, cos^2(t) (dx/dt - v), remains
    _, logs0 = scm_loss(net, x_t, t, dxdt, 0, SCMSettings(warmup=100, adaptive_weight=False))
    first = consistency_tangent(x_t, t, v, dv, dxdt, ramp=0.0)
    assert logs0["ramp"] == 0.0 and math.isclose(logs0["tangent_norm"], first.norm(dim=1).mean().item(),
                                                  rel_tol=1e-4)
    # adaptive weighting: minimising e^w m - w over w gives w = -log m, per time
    weight = AdaptiveWeight()
    opt = torch.optim.Adam(weight.parameters(), 3e-2)
    times = torch.linspace(0.1, 1.5, 32)
    target_mse = 0.01 + times**2  # a loss scale that grows with t
    for _ in range(400):
        w = weight(times)
        loss = (w.exp() * target_mse - w).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.allclose(weight(times), -target_mse.log(), atol=0.1)
    # the guard: non-finite losses are counted and stop the run after the limit
    assert check_finite(torch.tensor(1.0), 2, 3) == 0
    assert check_finite(torch.tensor(float("nan")), 0, 3) == 1
    with pytest.raises(FastMuseError, match="NaN/Inf 3 steps in a row"):
        check_finite(torch.tensor(float("inf")), 2, 3)


def train_consistency(mode: str, steps: int, settings: SCMSettings, seed: int = 0) -> VelocityNet:
    """sCT: the tangent from the data pair; sCD: from the exact probability-flow velocity."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net, weight = VelocityNet(), AdaptiveWeight() if settings.adaptive_weight else None
    params = [*net.parameters(), *(weight.parameters() if weight else [])]
    opt = torch.optim.Adam(params, 3e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for step in range(steps):
        x0, z = mixture(512, gen), SIGMA_D * torch.randn(512, 2, generator=gen)
        t = sample_time(512, settings.p_mean, settings.p_std, generator=gen)
        x_t = add_noise(x0, t, z)
        dxdt = velocity_target(x0, t, z) if mode == "sct" else exact_velocity(x_t, t)
        loss, _ = scm_loss(net, x_t, t, dxdt, step, settings, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    return net


@pytest.mark.parametrize("mode", ["sct", "scd"])
def test_consistency_model_covers_every_mode(mode):
    """Adaptive weighting off: here the distillation error can go to zero, and e^w ~ 1 / loss
    then scales the update up as the tangent vanishes (with it on, the samples blur: MMD about
    the single Gaussian's)."""
    net = train_consistency(mode, 2000, SCMSettings(warmup=500, adaptive_weight=False))
    data = mixture(4000, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(1)
    gaussian = data.mean(0) + torch.randn(4000, 2, generator=gen) @ torch.linalg.cholesky(data.T.cov()).T
    for steps in (1, 2):
        with torch.no_grad():
            samples = few_step_sample(net, SIGMA_D * torch.randn(4000, 2, generator=gen),
                                      consistency_times(steps), gen)
        assert (mode_masses(samples) - WEIGHTS).abs().max() < 0.03, (steps, mode_masses(samples))
        assert mmd(samples, data) < 0.5 * mmd(gaussian, data), (steps, mmd(samples, data))
