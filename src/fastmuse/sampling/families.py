"""Sampling families: one object per way of turning a network into an image, registered by
the name a model folder's `sampler.json` gives (`sampler`).

    maskgit         masked transformer, iterative parallel decoding (maskgit.py)
    one_step        a Di[M]O student of a masked transformer: one pass (one_step.py)
    autoregressive  the causal baseline, one token per step in raster order (autoregressive.py)
    ode             a diffusion transformer (DiT), probability-flow ODE (trigflow.py)
    few_step        a DMD / sCM student of a DiT: its own few times (trigflow.py)

Each family owns what differs between them: which options it takes (and their defaults from
`SamplerDefaults`), how a requested step count is read, how the options are checked, the
starting canvas, `fill` (canvas -> tokens or latents), how many network evaluations an image
costs, and how its output is decoded. `Pipeline`, editing, the trainers' sample grids, eval
and bench go through `family_for(model, defaults)`; adding a family is one class here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import ClassVar

import torch

from ..config import read_json
from ..errors import ConfigError
from ..models import ARTransformer, DiT, MaskedTransformer, TextContext
from .autoregressive import ar_sample, check_ar_args
from .maskgit import REFINE_PASSES, REFINE_STEPS, check_sampler_args, guided_steps, maskgit_sample
from .noise import Generators, random
from .one_step import check_one_step_args, one_step_sample
from .trigflow import check_ode_args, few_step_sample, ode_sample, student_times
from .windows import fill_windows

SAMPLER_FILE = "sampler.json"
SAMPLERS = ("maskgit", "one_step", "ode", "few_step")  # the names sampler.json may give


@dataclass
class SamplerDefaults:
    steps: int = 12
    guidance: float = 3.0
    schedule: str = "cosine"
    guidance_schedule: str = "constant"
    temperature: float = 1.0
    noise: float = 4.5
    top_k: int = 0  # autoregressive models only (0: no cut)
    # "maskgit" (iterative), or "one_step" for a Di[M]O student with its initial-state settings;
    # diffusion models: "ode" (the teacher, with `solver`) or "few_step": a DMD student trained
    # for `steps` uniform times, which also runs at any divisor of them (a subset of its times),
    # or a consistency (sCM) student with its own `times`, which runs any prefix of them.
    # An autoregressive model samples in raster order whatever this says.
    sampler: str = "maskgit"
    init_mask_ratio: float = 0.6
    embed_noise: float = 0.1
    solver: str = "heun"
    times: list[float] | None = None
    guidance_interval: list[float] = field(default_factory=lambda: [0.0, 1.0])  # maskgit: guided steps
    order: str = "confidence"  # maskgit: which tokens each step keeps (confidence or halton)
    refine: int = 0  # maskgit: rounds of re-masking the least likely tokens after the last step
    refine_fraction: float = 0.05  # maskgit: the share of the generated tokens a round re-samples
    micro: dict[str, float | None] | None = None  # micro-conditioned models: values when not given

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler is {self.sampler!r}; accepted: {', '.join(SAMPLERS)}")

    def student_steps(self) -> list[int]:
        """The step counts a few-step student runs: divisors of a DMD student's, any prefix of a
        consistency student's times."""
        if self.times:
            return list(range(1, len(self.times) + 1))
        return [k for k in range(1, self.steps + 1) if self.steps % k == 0]

    @staticmethod
    def load(folder: Path) -> SamplerDefaults:
        """A model folder's sampler.json (absent: the defaults), as strict as config.json:
        unknown keys and unreadable files are errors that name the file."""
        path = folder / SAMPLER_FILE
        if not path.is_file():
            return SamplerDefaults()
        data = read_json(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        accepted = [f.name for f in fields(SamplerDefaults)]
        unknown = sorted(set(data) - set(accepted))
        if unknown:
            raise ConfigError(f"{path}: unknown key {unknown[0]!r} (accepted: {', '.join(accepted)})")
        return SamplerDefaults(**data)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


class Family:
    """How one kind of model samples. Subclasses set `name` and override what differs."""

    name: ClassVar[str]
    makes_latents: ClassVar[bool] = False  # continuous latents (a DiT), not token ids

    def options(self, d: SamplerDefaults) -> dict:
        """The options a caller may override, at the model's defaults."""
        return {}

    def steps(self, model, d: SamplerDefaults, steps: int | None) -> int:
        """The step count a call runs (None: the model's); errors name what this family takes."""
        return d.steps if steps is None else steps

    def check(self, d: SamplerDefaults, steps: int, guidance: float, opts: dict) -> dict:
        """Validated options (completed where the family derives some)."""
        return opts

    def start(self, model, b: int, generator: Generators, device: torch.device) -> torch.Tensor:
        """The canvas text-to-image starts from: every token MASK."""
        g = model.config.grid
        return torch.full((b, g, g), model.mask_id, device=device)

    def fill(self, run: SamplingRun, init: torch.Tensor, steps: int | None) -> torch.Tensor:
        raise NotImplementedError

    def network_evaluations(self, d: SamplerDefaults, steps: int, guidance: float,
                            interval: tuple[float, float] | None) -> int:
        """Forward passes per image (a guided pass counts twice: it runs the batch twice)."""
        return steps * (2 if guidance > 0 else 1)

    def decode(self, tokenizer, model, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (not clamped) from what `fill` made."""
        return tokenizer.decode(x)


class MaskGIT(Family):
    name = "maskgit"

    def options(self, d: SamplerDefaults) -> dict:
        return {"schedule": d.schedule, "guidance_schedule": d.guidance_schedule,
                "temperature": d.temperature, "noise": d.noise,
                "guidance_interval": tuple(d.guidance_interval), "order": d.order,
                "refine": d.refine, "refine_fraction": d.refine_fraction}

    def check(self, d: SamplerDefaults, steps: int, guidance: float, opts: dict) -> dict:
        check_sampler_args(steps, guidance, opts["schedule"], opts["guidance_schedule"],
                           opts["temperature"], opts["noise"], opts["guidance_interval"], opts["order"],
                           opts["refine"], opts["refine_fraction"])
        return opts

    def fill(self, run: SamplingRun, init: torch.Tensor, steps: int | None) -> torch.Tensor:
        def sample(window: torch.Tensor) -> torch.Tensor:
            return maskgit_sample(run.model, window, run.cond, run.uncond, steps=steps or run.steps,
                                  guidance=run.guidance, generator=run.generator, **run.options)

        return fill_windows(sample, init, run.model.mask_id, run.model.config.grid)

    def network_evaluations(self, d: SamplerDefaults, steps: int, guidance: float,
                            interval: tuple[float, float] | None) -> int:
        refined = d.refine * (REFINE_PASSES + REFINE_STEPS)
        if guidance <= 0:
            return steps + refined
        return steps + guided_steps(steps, interval or tuple(d.guidance_interval)) + refined


class OneStep(Family):
    name = "one_step"

    def options(self, d: SamplerDefaults) -> dict:
        return {"temperature": d.temperature, "init_mask_ratio": d.init_mask_ratio,
                "embed_noise": d.embed_noise}

    def steps(self, model, d: SamplerDefaults, steps: int | None) -> int:
        if steps not in (None, 1):
            raise ConfigError(f"steps is {steps!r}; this one-step model takes exactly 1")
        return 1

    def check(self, d: SamplerDefaults, steps: int, guidance: float, opts: dict) -> dict:
        check_one_step_args(guidance, opts["temperature"], opts["init_mask_ratio"], opts["embed_noise"])
        return opts

    def fill(self, run: SamplingRun, init: torch.Tensor, steps: int | None) -> torch.Tensor:
        def sample(window: torch.Tensor) -> torch.Tensor:
            return one_step_sample(run.model, window, run.cond, run.uncond, guidance=run.guidance,
                                   generator=run.generator, **run.options)

        return fill_windows(sample, init, run.model.mask_id, run.model.config.grid)


class Autoregressive(Family):
    name = "autoregressive"

    def options(self, d: SamplerDefaults) -> dict:
        return {"temperature": d.temperature, "top_k": d.top_k}

    def steps(self, model, d: SamplerDefaults, steps: int | None) -> int:
        tokens = model.config.grid ** 2
        if steps not in (None, tokens):
            raise ConfigError(f"steps is {steps!r}; the autoregressive model takes one step per "
                              f"token: {tokens}")
        return tokens

    def check(self, d: SamplerDefaults, steps: int, guidance: float, opts: dict) -> dict:
        check_ar_args(guidance, opts["temperature"], opts["top_k"])
        return opts

    def fill(self, run: SamplingRun, init: torch.Tensor, steps: int | None) -> torch.Tensor:
        g = run.model.config.grid
        if tuple(init.shape[-2:]) != (g, g) or bool((init != run.model.mask_id).any()):
            raise ConfigError("the autoregressive model only generates whole images from text; "
                              "inpainting, outpainting and editing need a masked model")
        return ar_sample(run.model, init, run.cond, run.uncond, guidance=run.guidance,
                         generator=run.generator, **run.options)


class DiffusionODE(Family):
    name = "ode"
    makes_latents = True

    def options(self, d: SamplerDefaults) -> dict:
        return {"solver": d.solver}

    def check(self, d: SamplerDefaults, steps: int, guidance: float, opts: dict) -> dict:
        check_ode_args(steps, guidance, opts["solver"])
        return opts

    def start(self, model, b: int, generator: Generators, device: torch.device) -> torch.Tensor:
        """Noise of std sigma_d in the latent's shape."""
        c = model.config
        return c.sigma_d * random((b, c.channels, c.grid, c.grid), generator, device, normal=True)

    def fill(self, run: SamplingRun, init: torch.Tensor, steps: int | None) -> torch.Tensor:
        velocity = run.model.guided(run.cond, run.uncond, run.guidance)
        return ode_sample(velocity, init, steps or run.steps, **run.options)

    def network_evaluations(self, d: SamplerDefaults, steps: int, guidance: float,
                            interval: tuple[float, float] | None) -> int:
        per_step = 2 if guidance > 0 else 1
        return (2 * steps - 1) * per_step if d.solver == "heun" else steps * per_step  # Heun: 2 but the last

    def decode(self, tokenizer, model, x: torch.Tensor) -> torch.Tensor:
        return tokenizer.decode_latents(x / model.config.latent_scale)


class FewStep(DiffusionODE):
    name = "few_step"

    def options(self, d: SamplerDefaults) -> dict:
        return {}

    def steps(self, model, d: SamplerDefaults, steps: int | None) -> int:
        accepted = d.student_steps()
        steps = d.steps if steps is None else steps
        if steps not in accepted:
            raise ConfigError(f"steps is {steps!r}; this {d.steps}-step student takes "
                              f"{', '.join(map(str, accepted))}")
        return steps

    def check(self, d: SamplerDefaults, steps: int, guidance: float, opts: dict) -> dict:
        check_ode_args(steps, guidance, "heun")
        return {"times": d.times[:steps] if d.times else student_times(steps)}

    def fill(self, run: SamplingRun, init: torch.Tensor, steps: int | None) -> torch.Tensor:
        velocity = run.model.guided(run.cond, run.uncond, run.guidance)
        return few_step_sample(velocity, init, run.options["times"], run.generator)

    def network_evaluations(self, d: SamplerDefaults, steps: int, guidance: float,
                            interval: tuple[float, float] | None) -> int:
        return steps * (2 if guidance > 0 else 1)


FAMILIES: dict[str, Family] = {f.name: f for f in (MaskGIT(), OneStep(), Autoregressive(), DiffusionODE(),
                                                     FewStep())}


def family_for(model, defaults: SamplerDefaults) -> Family:
    """The family that samples `model` with these defaults: the model's kind decides for the
    autoregressive and diffusion models, `defaults.sampler` among the rest."""
    if isinstance(model, ARTransformer):
        return FAMILIES["autoregressive"]
    if isinstance(model, DiT):
        return FAMILIES["few_step" if defaults.sampler == "few_step" else "ode"]
    if defaults.sampler in ("ode", "few_step"):
        raise ConfigError(f"sampler is {defaults.sampler!r}, which samples diffusion models; this is a "
                          f"{type(model).__name__} (accepted: maskgit, one_step)")
    return FAMILIES[defaults.sampler]


@dataclass
class SamplingRun:
    """One call's family, model, text contexts, options and random stream (see Pipeline.sampling)."""
    family: Family
    model: MaskedTransformer | ARTransformer | DiT
    cond: TextContext
    uncond: TextContext | None
    steps: int
    guidance: float
    options: dict
    generator: Generators

    def fill(self, init: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Tokens [B, h, w] with MASK where unknown -> completed (window by window for the
        masked families). A diffusion model: noise [B, D, h, w] (std sigma_d) -> latents."""
        return self.family.fill(self, init, steps)
