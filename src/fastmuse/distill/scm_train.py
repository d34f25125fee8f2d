"""`fastmuse distill scm`: the sCM training run (the method is in scm.py).

The student starts as a copy of the teacher (a DiT in TrigFlow form) and learns the
consistency function f(x_t, t) = cos(t) x_t - sin(t) v(x_t, t) from data pairs: the latents
of the teacher's own training data (its token cache) with their main captions, noised at sCM's
times. `mode` "scd" takes the ODE tangent from the teacher's guided velocity (distillation),
"sct" from the pair itself (consistency training, here fine-tuned from the teacher as ECT does,
not from scratch: CPU budget). Training does not depend on the number of sampling steps; the
student folder samples in `student_steps` (1 or 2, times pi/2 and scm.MID_TIME).

Every step logs its loss, the unweighted consistency MSE, the tangent norms, the gradient norm
before clipping and whether it was skipped: a non-finite loss skips the update, and
`max_bad_steps` of them in a row stop the run. A finite loss does not mean a healthy run: the
raw tangent norm's drift over its level after the warm-up (`TangentDrift`) is logged as
`tangent_drift`, with a warning when it passes `drift_warn`. Every random draw of step s comes from a
generator seeded by (seed, s), so `--resume` continues exactly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from ..config import check_range
from ..errors import ConfigError
from ..fast import resolve_device
from ..models import DiT
from ..models.dit import token_latents
from ..pipeline import Pipeline, SamplerDefaults
from ..sampling.noise import random
from ..sampling.trigflow import add_noise, sample_time, velocity_target
from ..train.run import Run, step_generator, update_ema
from .common import (
    DistillConfig,
    freeze,
    load_diffusion_teacher,
    save_run_student,
    save_samples,
    teacher_and_data,
    teacher_guidance,
)
from .scm import AdaptiveWeight, SCMSettings, TangentDrift, check_finite, consistency_times, scm_loss


@dataclass
class SCMConfig(DistillConfig):
    kind = "distill_scm"
    later_keys = (*DistillConfig.later_keys, "drift_warn", "drift_span")
    teacher: str = "dit-128"  # a diffusion model (kind "dit"): the student's start, sCD's tangent
    mode: Literal["scd", "sct"] = "scd"
    student_steps: int = 2  # the student folder's default sampling steps (1 or 2)
    lr: float = 3e-5  # 1e-4 drifted: the tangent norm grew 4 to 32 over 300 steps, the samples blanked
    weight_lr: float = 2e-2  # the adaptive weight's (it has to travel to about -log(loss))
    tangent_norm: float = 0.1  # c in g / (||g|| + c); 0: off
    tangent_warmup: int = 200  # steps over which the tangent's second term ramps in; 0: off
    adaptive_weight: bool = True
    p_mean: float = -1.0
    p_std: float = 1.4
    max_bad_steps: int = 5  # non-finite losses in a row before the run stops
    drift_warn: float = 1.6  # warn when the tangent norm passes this x its post-warm-up level; 0: off
    drift_span: int = 100  # steps after the tangent warm-up that set that level
    log_every: int = 5

    def validate(self) -> None:
        super().validate()
        if self.student_steps not in (1, 2):
            raise ConfigError(f"student_steps is {self.student_steps!r}; accepted: 1, 2")
        for name in ("tangent_norm", "tangent_warmup", "weight_lr"):
            check_range(name, getattr(self, name), 0.0)
        check_range("p_std", self.p_std, 1e-3)
        check_range("drift_warn", self.drift_warn, 0.0)
        check_range("drift_span", self.drift_span, 1)
        check_range("max_bad_steps", self.max_bad_steps, 1)

    def settings(self) -> SCMSettings:
        return SCMSettings(self.tangent_norm, self.tangent_warmup, self.adaptive_weight, self.p_mean,
                           self.p_std)


def student_defaults(cfg: SCMConfig) -> SamplerDefaults:
    return SamplerDefaults(sampler="few_step", steps=cfg.student_steps, guidance=0.0,
                           times=consistency_times(2))


def distill_scm(cfg: SCMConfig, out: str | Path, resume: bool = False, stop_at: int | None = None,
                device: str | torch.device = "cpu") -> Path:
    """Run into folder `out` on `device` (cpu, cuda, cuda:N, auto); returns the student model
    folder (out/student). The data cache is built on the CPU; draws come from CPU generators
    (the same run on any device)."""
    out = Path(out)
    device = resolve_device(device)
    run = Run(out, cfg, resume, stop_at, fixed=("teacher", "mode", "adaptive_weight"))
    teacher, data = teacher_and_data(cfg, device, load_diffusion_teacher)
    tm = teacher.transformer.requires_grad_(False)
    s = tm.config.sigma_d
    main_caption = data.train.cap_rows[data.train.cap_offsets[:-1]]  # sample i's first caption
    g = teacher_guidance(cfg, teacher)
    settings = cfg.settings()

    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(tm).train().requires_grad_(True)
    freeze(student, cfg.frozen)
    with torch.device("cpu"):  # initialised on the CPU: the same weights on any device
        weight = AdaptiveWeight().to(device)
    ema = copy.deepcopy(tm).eval()
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.0)
    opt_w = torch.optim.Adam(weight.parameters(), lr=cfg.weight_lr)
    modules = {"student": student, "weight": weight, "ema": ema}
    optimizers = {"student": opt, "weight": opt_w}
    start = run.open(modules, optimizers)
    student_pipe = Pipeline(ema, teacher.tokenizer, teacher.text_encoder, student_defaults(cfg))
    probe = list(cfg.sample_prompts)
    if start == 0:
        save_samples(out, teacher(probe, seed=0), probe, "teacher")
    uncond = teacher.uncond().repeat(cfg.batch_size)
    drift = TangentDrift(cfg.tangent_warmup, cfg.drift_span, cfg.drift_warn)
    for record in run.history():  # a resumed run picks up the norms it logged
        drift.add(record["step"], record.get("tangent_norm"))

    bad = 0
    bar = run.steps(f"{cfg.mode}")
    for step in bar:
        gen = step_generator(cfg.seed, step, 0)
        run.set_lr(step, {opt: cfg.lr, opt_w: cfg.weight_lr})
        pick = torch.randint(len(data.train), (cfg.batch_size,), generator=gen, device="cpu")
        text = data.captions.lookup(main_caption[pick]).to(device)
        x0 = token_latents(teacher.tokenizer, data.train.tokens[pick].to(device), tm.config.latent_scale)
        z = s * random(x0.shape, gen, device, normal=True)
        t = sample_time(len(x0), cfg.p_mean, cfg.p_std, s, generator=gen).to(device)
        x_t = add_noise(x0, t, z)
        if cfg.mode == "scd":
            with torch.no_grad():
                dxdt = tm.guided(tm.prepare_text(text), uncond, g)(x_t, t)
        else:
            dxdt = velocity_target(x0, t, z)
        ctx = student.prepare_text(text)
        loss, logs = scm_loss(lambda x, tt, c=ctx: student.velocity(x, tt, c), x_t, t, dxdt, step, settings,
                              weight if cfg.adaptive_weight else None, s)
        bad = check_finite(loss, bad, cfg.max_bad_steps)
        opt.zero_grad(set_to_none=True)
        opt_w.zero_grad(set_to_none=True)
        if bad:  # skipped: no update, logged
            logs.update(loss=float("nan"), grad_norm=float("nan"), skipped=1)
        else:
            loss.backward()
            logs.update(loss=loss.item(), skipped=0, grad_norm=torch.nn.utils.clip_grad_norm_(
                student.parameters(), cfg.grad_clip).item())
            opt.step()
            opt_w.step()
        done = step + 1
        update_ema(ema, student, cfg.ema_decay, done)
        if run.due(done, cfg.log_every) or bad:
            if (ratio := drift.add(done, logs["tangent_norm"])) is not None:
                logs["tangent_drift"] = ratio
            run.log({"step": done, **logs})
            bar.set_postfix(loss=f"{logs['loss']:.4f}", grad=f"{logs['grad_norm']:.2f}")
        if run.due(done, cfg.eval_every):
            save_samples(out, student_pipe(probe, seed=0), probe, done)
        run.checkpoint(done)
    if not run.finish(ema):
        return out
    return save_student(out, cfg, ema, teacher)


def save_student(run: Path, cfg: SCMConfig, student: DiT, teacher: Pipeline) -> Path:
    how = "the teacher's guided ODE tangent (sCD)" if cfg.mode == "scd" else "data-pair tangents (sCT)"
    card = (f"# {cfg.student_steps}-step sCM student of {cfg.teacher}\n\n![samples](grid.png)\n\n"
            f"`fastmuse distill scm --mode {cfg.mode}`: {cfg.steps} updates, batch {cfg.batch_size}, "
            f"{how}, teacher guidance {teacher_guidance(cfg, teacher)}; tangent normalisation "
            f"c = {cfg.tangent_norm}, tangent warm-up {cfg.tangent_warmup} steps, adaptive weighting "
            f"{'on' if cfg.adaptive_weight else 'off'}. `config.scm.json` is the run's config, "
            f"`metrics.jsonl` its log. Samples at times {consistency_times(2)}: 1 or 2 network "
            "evaluations per image, no guidance pass.\n")
    return save_run_student(run, cfg, student, teacher, student_defaults(cfg), card, "config.scm.json")
