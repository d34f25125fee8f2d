"""sCM (Lu and Song 2024, arXiv 2410.11081): continuous-time consistency models in TrigFlow.

The consistency function is the TrigFlow denoiser of the student's velocity v = sigma_d F:

    f(x_t, t) = cos(t) x_t - sin(t) v(x_t, t)

and should stay constant along the probability-flow ODE. Its total derivative along the ODE,

    df/dt = cos(t) (dx_t/dt - v) - sin(t) (x_t + dv/dt),    dv/dt = J_v . (dx_t/dt, 1),

comes from one forward-mode pass (torch.func.jvp) through the student with its current weights
and no graph (sCM's stop-gradient copy theta^-). The tangent dx_t/dt of x_t = cos(t) x0 + sin(t) z
is the teacher's guided velocity at x_t for sCD (distillation), or the data pair's
cos(t) z - sin(t) x0 (trigflow.velocity_target) for sCT (training without a teacher). The
loss pulls F_theta towards F_theta^- + g with g = cos(t) df/dt: for a small step that is the
discrete consistency target f(x_{t-dt}, t-dt), so F moves to make f constant along the ODE.

Stabilisers (`SCMSettings`), each switchable:
- tangent normalisation g / (||g|| + c), c = 0.1: bounds the target whatever df/dt does;
- tangent warm-up: the second term of df/dt (the one through dv/dt, which is what blows up)
  ramped in by r = min(1, step / warmup);
- adaptive weighting: a learned w(t) with loss e^w(t) ||.||^2 / D - w(t), which evens out
  the loss's scale over time;
- smooth time conditioning is the network's part: the DiT and the 2-D test nets take t in
  [0, pi/2] unscaled (highest frequency 1), not 1000 t, so dv/dt stays small.
`TangentDrift` watches for the slow instability none of these stops: the raw tangent norm
climbing while the loss stays finite.
Inside the JVP attention runs on PyTorch's math SDPA kernel: the fused CPU (flash) kernel has
no forward-mode rule. The training forward and backward keep the fused kernel.
"""

from __future__ import annotations

import math
import statistics
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..errors import FastMuseError
from ..sampling.trigflow import SIGMA_D, T_MAX, Velocity, _b

# the 2-step sampler's intermediate time. The paper's 1.1 was tuned for its teachers; for the
# sCD student of dit-128 1.3-1.4 draws more (shapes 0.431-0.437 / 0.486-0.493 against 0.361 /
# 0.444 at 1.1; 1.0 and 1.5 are worse: docs/distillation.md, session 22)
MID_TIME = 1.4


@dataclass(frozen=True)
class SCMSettings:
    tangent_norm: float = 0.1  # c in g / (||g|| + c); 0: off
    warmup: int = 1000  # tangent warm-up iterations; 0: off (the full tangent from step 0)
    adaptive_weight: bool = True  # train w(t) (an `AdaptiveWeight`); off: plain mean
    p_mean: float = -1.0  # training times tan(t) = e^tau / sigma_d, tau ~ N(p_mean, p_std)
    p_std: float = 1.4


def consistency_times(steps: int) -> list[float]:
    """The sampler's times: pi/2, then MID_TIME for a second step."""
    return [T_MAX, MID_TIME][:steps]


def velocity_jvp(velocity: Velocity, x_t: torch.Tensor, t: torch.Tensor, dxdt: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, dv/dt) of the velocity along (dx_t/dt, 1), one forward-mode pass, no graph."""
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH):
        return torch.func.jvp(velocity, (x_t, t), (dxdt, torch.ones_like(t)))


def consistency_tangent(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor, dv: torch.Tensor,
                        dxdt: torch.Tensor, ramp: float = 1.0) -> torch.Tensor:
    """g = cos(t) df/dt, its second term scaled by `ramp` (the tangent warm-up)."""
    c, s = _b(t.cos(), x_t), _b(t.sin(), x_t)
    return c * c * (dxdt - v) - ramp * c * s * (x_t + dv)


class AdaptiveWeight(nn.Module):
    """w(t): a small MLP on Fourier features of t (frequencies 1..8, smooth), zero-initialised."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(16, hidden), nn.SiLU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, 9, dtype=torch.float32, device=t.device)
        angles = t.float()[:, None] * k
        return self.net(torch.cat([angles.sin(), angles.cos()], 1))[:, 0]


def scm_loss(velocity: Velocity, x_t: torch.Tensor, t: torch.Tensor, dxdt: torch.Tensor, step: int,
             settings: SCMSettings, weight: AdaptiveWeight | None = None, sigma_d: float = SIGMA_D
             ) -> tuple[torch.Tensor, dict[str, float]]:
    """The continuous-time consistency loss at (x_t, t) with the ODE tangent dx_t/dt (from the
    teacher for sCD, from the data pair for sCT); `step` drives the tangent warm-up."""
    v_minus, dv = velocity_jvp(velocity, x_t, t, dxdt)
    ramp = min(1.0, step / settings.warmup) if settings.warmup else 1.0
    g = consistency_tangent(x_t, t, v_minus, dv, dxdt, ramp)
    g_norm = g.flatten(1).norm(dim=1)
    if settings.tangent_norm > 0:
        g = g / _b(g_norm + settings.tangent_norm, g)
    target = (v_minus / sigma_d + g).detach()
    per_sample = (velocity(x_t, t) / sigma_d - target).pow(2).flatten(1).mean(1)
    logs = {"loss_mse": per_sample.mean().item(), "tangent_norm": g_norm.mean().item(),
            "tangent_max": g_norm.max().item(), "ramp": ramp}
    if weight is None:
        return per_sample.mean(), logs
    w = weight(t)
    return (w.exp() * per_sample - w).mean(), logs


@dataclass
class TangentDrift:
    """The raw tangent norm's drift: the median of the last `window` logged norms over the
    median of those logged in the `span` steps after `start` (the end of the tangent warm-up);
    None until both exist (a full window). Above `warn` (0: never) it warns, once. Measured
    (docs/distillation.md): the p_mean 0, lr 3e-5 sCD run reached x1.9 at update 350, as its
    samples turned to haze, and x3.0 at 600 (blank); the same run at lr 1e-5 stayed at or below
    x1.4 for 900 updates."""

    start: int
    span: int = 100
    warn: float = 0.0
    window: int = 10
    reference: list[float] = field(default_factory=list)
    recent: list[float] = field(default_factory=list)
    warned: bool = False

    def add(self, step: int, norm: float | None) -> float | None:
        if step <= self.start or norm is None or not math.isfinite(norm):
            return None
        if step <= self.start + self.span:
            self.reference.append(norm)
            return None
        self.recent = [*self.recent, norm][-self.window:]
        if not self.reference or len(self.recent) < self.window:
            return None
        ratio = statistics.median(self.recent) / max(statistics.median(self.reference), 1e-12)
        if self.warn and ratio > self.warn and not self.warned:
            self.warned = True
            warnings.warn(f"step {step}: the raw tangent norm is {ratio:.1f}x its level after the warm-up; "
                          "sCD runs that drifted like this collapsed 50-100 steps later "
                          "(docs/distillation.md): resume from an earlier checkpoint at a lower lr",
                          stacklevel=2)
        return ratio


def check_finite(loss: torch.Tensor, bad_in_a_row: int, limit: int) -> int:
    """Count non-finite losses in a row; the trainer skips such a step and stops after `limit`."""
    if math.isfinite(loss.item()):
        return 0
    if bad_in_a_row + 1 >= limit:
        raise FastMuseError(f"the loss was NaN/Inf {limit} steps in a row; lower lr, keep tangent_norm "
                            "and warmup on, or resume from an earlier checkpoint")
    return bad_in_a_row + 1
