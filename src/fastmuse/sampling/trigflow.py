"""TrigFlow (Lu and Song 2024, the sCM paper): the continuous-time diffusion parameterisation
shared by the diffusion teacher and its DMD and sCM students.

    x_t = cos(t) x0 + sin(t) z,   z ~ N(0, sigma_d^2 I),   t in [0, pi/2]

The network predicts the velocity v = dx_t/dt = cos(t) z - sin(t) x0, as sigma_d * F(x_t / sigma_d, t);
the functions here take that velocity as a closure `velocity(x_t, t) -> v`, so they work for any
network and for exact scores (the tests' Gaussian mixtures). From a velocity:

    denoised  x0 = cos(t) x_t - sin(t) v
    ODE step  x_s = cos(t - s) x_t - sin(t - s) v      (exact when v is constant along the step:
                                                        TrigFlow's DDIM; the first-order sampler)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import ConfigError
from .control import check_cancelled
from .noise import Generators, random

SIGMA_D = 0.5
T_MAX = math.pi / 2
Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _b(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """t [B] broadcast against x [B, ...]."""
    return t.view(-1, *([1] * (x.dim() - 1)))


def add_noise(x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _b(t.cos(), x0) * x0 + _b(t.sin(), x0) * z


def velocity_target(x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return _b(t.cos(), x0) * z - _b(t.sin(), x0) * x0


def denoise(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _b(t.cos(), x_t) * x_t - _b(t.sin(), x_t) * v


def sample_time(n: int, p_mean: float = -1.0, p_std: float = 1.4, sigma_d: float = SIGMA_D,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """t = arctan(e^tau / sigma_d), tau ~ N(p_mean, p_std): the sCM paper's training times
    (EDM's log-normal noise levels sigma = e^tau mapped to TrigFlow time)."""
    tau = p_mean + p_std * torch.randn(n, generator=generator, device="cpu")  # callers move it
    return torch.atan(tau.exp() / sigma_d)


def flow_loss(velocity: Velocity, x0: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the predicted velocity: the teacher's (and DMD's fake score's) loss."""
    return (velocity(add_noise(x0, t, z), t) - velocity_target(x0, t, z)).pow(2).mean()


SOLVERS = ("euler", "heun")


def check_ode_args(steps: int, guidance: float, solver: str) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps is {steps!r}; accepted: an integer >= 1")
    if not isinstance(guidance, int | float) or not 0 <= guidance <= 50:
        raise ConfigError(f"guidance is {guidance!r}; accepted: a number in [0, 50] (0 = off)")
    if solver not in SOLVERS:
        raise ConfigError(f"solver is {solver!r}; accepted: {', '.join(SOLVERS)}")


@torch.no_grad()
def ode_sample(velocity: Velocity, z: torch.Tensor, steps: int, solver: str = "heun",
               t_max: float = T_MAX, t_min: float = 0.0) -> torch.Tensor:
    """Probability-flow ODE from x = z (noise, std sigma_d) at t_max down to t_min, `steps`
    uniform steps in t. "euler": the TrigFlow DDIM step; "heun": its second-order correction
    (averaging the velocities at both ends, except on the last step to t_min = 0)."""
    if solver not in SOLVERS:
        raise ConfigError(f"solver is {solver!r}; accepted: {', '.join(SOLVERS)}")
    ts = torch.linspace(t_max, t_min, steps + 1, dtype=torch.float64, device="cpu").tolist()
    x = z
    for t, s in zip(ts[:-1], ts[1:], strict=True):
        check_cancelled()
        cos, sin = math.cos(t - s), math.sin(t - s)
        v = velocity(x, torch.full((len(x),), t, dtype=z.dtype, device=z.device))
        x_next = cos * x - sin * v
        if solver == "heun" and s > 0:
            v = 0.5 * (v + velocity(x_next, torch.full((len(x),), s, dtype=z.dtype, device=z.device)))
            x_next = cos * x - sin * v
        x = x_next
    return x


def student_times(steps: int) -> list[float]:
    """The few-step generator's times: pi/2 then evenly spaced down (DMD2's 4-step student
    uses a fixed schedule of this kind); one step is pi/2 alone."""
    return [T_MAX * (steps - i) / steps for i in range(steps)]


def few_step_sample(velocity: Velocity, z: torch.Tensor, times: list[float], generator: Generators = None,
                    upto: int | None = None) -> torch.Tensor:
    """The student's sampler, a pure function: denoise z (std sigma_d) at times[0], re-noise the
    result to times[1], denoise, ... With `upto` = k, stop before step k and return its noisy
    input instead: DMD2's backward simulation (the generator trains on its own intermediate
    samples, not on noised real images). `generator` may be per-row (server batching)."""
    x = z
    for i, t in enumerate(times[:upto]):
        check_cancelled()
        tt = torch.full((len(z),), t, dtype=z.dtype, device=z.device)
        if i > 0:
            x = add_noise(x, tt, SIGMA_D * random(z.shape, generator, z.device, normal=True))
        x = denoise(x, tt, velocity(x, tt))
    if upto is not None and 0 < upto < len(times):
        tt = torch.full((len(z),), times[upto], dtype=z.dtype, device=z.device)
        x = add_noise(x, tt, SIGMA_D * random(z.shape, generator, z.device, normal=True))
    return x
