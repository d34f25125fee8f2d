"""`fastmuse distill dmd`: the DMD / DMD2 training run (the method is in dmd.py).

The student G starts as a copy of the teacher (a latent DiT in TrigFlow form; or a deeper copy,
`student_depth`; or another student of it, `student_init`) and maps noise to an image in
`student_steps` denoising steps at fixed times (sampling/trigflow.py `student_times`); a
multi-step G trains by backward simulation: a random step i, its input made by G's own first i
steps without gradient. Per generator update the fake denoiser (a second copy of the teacher)
takes `fake_updates` flow-loss updates on fresh G samples; with `gan`, a head on its features
learns real vs G images and G gets the non-saturating loss. method "dmd" (DMD1) adds the
regression loss on (noise, teacher ODE output) pairs computed once at the start and kept in
the run folder.

Prompts are the captions of the teacher's training data (the token cache the teacher trained
from; their latents are the GAN's real side). Every random draw of step s comes from a generator
seeded by (seed, s), so `--resume` continues exactly. The run folder holds config.json,
metrics.jsonl, samples/, checkpoints/ and, at the end, student/: a model folder.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from tqdm import tqdm

from ..config import check_interval, check_range
from ..errors import ConfigError
from ..fast import autocast, resolve_device
from ..fsutil import atomic_write_bytes
from ..models import DiT, load_transformer
from ..models.dit import token_latents
from ..models.transformer import deepen
from ..pipeline import Pipeline, SamplerDefaults
from ..sampling.noise import random
from ..sampling.trigflow import T_MAX, denoise, few_step_sample, ode_sample, student_times
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
from .dmd import DiscriminatorHead, fake_loss, gan_discriminator_loss, gan_generator_loss, generator_loss

STUDENT_STEPS = (1, 2, 3, 4)
TIMES = ("0", 0.0, "pi/2", T_MAX)  # TrigFlow times: noise-free at 0, pure noise at pi/2


@dataclass
class DMDConfig(DistillConfig):
    kind = "distill_dmd"
    precisions = ("no", "bf16")
    teacher: str = "dit-128"  # a diffusion model (kind "dit")
    method: Literal["dmd2", "dmd"] = "dmd2"  # dmd: + DMD1's regression loss (one step only)
    student_steps: int = 1
    fake_updates: int = 5  # fake-denoiser updates per generator update (DMD2's two time scales)
    fake_lr: float = 2e-5
    gan: bool = True
    gan_weight: float = 3e-3  # generator's GAN loss weight (the reference's)
    disc_weight: float = 1e-2  # discriminator loss weight, added to the fake denoiser's loss
    regression_weight: float = 0.25  # method "dmd"
    regression_pairs: int = 64
    regression_batch: int = 4
    # a model folder of the teacher's architecture (e.g. an sCD student) G starts from instead
    # of the teacher; the fake denoiser still starts as the teacher ("": G is the teacher's copy)
    student_init: str = ""
    # G's blocks (0: the teacher's depth; a multiple of it: each teacher block followed by copies
    # that start as identities, models/transformer.py `deepen`), to test whether G's size bounds it
    student_depth: int = 0
    # the range of TrigFlow times t ~ U(lo, hi) at which G's samples are noised for the
    # distribution-matching gradient (layouts and whole objects are decided at high t)
    dm_times: tuple[float, float] = (0.02, 1.55)
    # the times the fake denoiser trains at: null = the teacher's training distribution; [lo, hi]
    # = t ~ U(lo, hi), e.g. dm_times, so that all of its updates go where it is queried
    fake_times: tuple[float, float] | None = None
    # the time a one-step G is told its input has; the input is pure noise whatever it says. At
    # pi/2 the teacher's map starts as the blurry mean (small objects absent), below it the
    # teacher reads structure into the noise (DMD2's one-step SDXL student: timestep 399 of 1000;
    # 1.3 here did not help, docs/distillation.md session 27)
    student_time: float = T_MAX
    later_keys = (*DistillConfig.later_keys, "student_init", "student_depth", "dm_times", "fake_times",
                  "student_time")

    def validate(self) -> None:
        super().validate()
        for name in ("fake_updates", "regression_pairs", "regression_batch"):
            check_range(name, getattr(self, name), 1)
        check_range("student_depth", self.student_depth, 0)
        check_interval("dm_times", self.dm_times, "the times of G's samples' noising", TIMES, strict=True)
        if self.fake_times is not None:
            check_interval("fake_times", self.fake_times, "the fake denoiser's training times; or null: the "
                           "teacher's", TIMES, strict=True)
        for name in ("fake_lr", "gan_weight", "disc_weight", "regression_weight"):
            check_range(name, getattr(self, name), 0.0)
        if self.student_steps not in STUDENT_STEPS:
            raise ConfigError(f"student_steps is {self.student_steps!r}; accepted: "
                              f"{', '.join(map(str, STUDENT_STEPS))}")
        if not isinstance(self.student_time, int | float) or not 0 < self.student_time <= T_MAX:
            raise ConfigError(f"student_time is {self.student_time!r}; accepted: a TrigFlow time in "
                              "(0, pi/2]")
        if self.student_time != T_MAX and self.student_steps != 1:
            raise ConfigError(f"student_time is {self.student_time!r}: a time other than pi/2 is for "
                              f"one-step students; student_steps is {self.student_steps}")
        if self.method == "dmd" and self.student_steps != 1:
            raise ConfigError("method 'dmd' (regression on teacher ODE pairs) trains one-step students; "
                              f"student_steps is {self.student_steps}: use method 'dmd2'")


def generator_times(cfg: DMDConfig) -> list[float]:
    return [cfg.student_time] if cfg.student_steps == 1 else student_times(cfg.student_steps)


def student_defaults(cfg: DMDConfig) -> SamplerDefaults:
    times = generator_times(cfg) if cfg.student_time != T_MAX else None
    return SamplerDefaults(sampler="few_step", steps=cfg.student_steps, guidance=0.0, times=times)


def initial_student(cfg: DMDConfig, teacher: DiT) -> DiT:
    """G at step 0: a copy of the teacher (`deepen`ed to `student_depth`), or of `student_init`
    (the same architecture required)."""
    if cfg.student_depth % teacher.config.depth:
        raise ConfigError(f"student_depth is {cfg.student_depth}; accepted: 0 (the teacher's depth) "
                          f"or a multiple of the teacher's depth {teacher.config.depth}")
    student = deepen(teacher, cfg.student_depth) if cfg.student_depth else copy.deepcopy(teacher)
    if not cfg.student_init:
        return student
    with torch.device("cpu"):
        init = load_transformer(cfg.student_init)
    if init.config != student.config:
        raise ConfigError(f"student_init {cfg.student_init!r} is not a model of the student's "
                          f"architecture (the teacher {cfg.teacher!r}'s, depth {student.config.depth}); "
                          "accepted: a student distilled from it (e.g. runs/NAME/student)")
    student.load_state_dict(init.state_dict())
    return student


def regression_set(teacher: Pipeline, cfg: DMDConfig, prompts: list[str], path: Path
                   ) -> dict[str, torch.Tensor]:
    """DMD1's pairs: noise z and the teacher's guided ODE output from it, for the first
    `regression_pairs` prompts; computed once and kept in the run folder."""
    if path.is_file():
        return load(path.read_bytes())
    m, d = teacher.transformer, teacher.defaults
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (len(prompts), m.config.channels, m.config.grid, m.config.grid)
    z = m.config.sigma_d * random(shape, gen, teacher.device, normal=True)
    g = teacher_guidance(cfg, teacher)
    outs = []
    for i in tqdm(range(0, len(prompts), 16), desc="teacher ODE pairs"):
        cond = m.prepare_text(teacher.text_encoder.encode(prompts[i:i + 16]))
        uncond = teacher.uncond().repeat(len(cond.c))
        outs.append(ode_sample(m.guided(cond, uncond, g), z[i:i + 16], d.steps, d.solver))
    pairs = {"z": z.cpu(), "x0": torch.cat(outs).cpu()}
    atomic_write_bytes(path, save(pairs))
    return pairs


def regression_pairs(teacher: Pipeline, cfg: DMDConfig, data, out: Path
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DMD1's caption rows (drawn once from the seed) and their (noise, teacher output) pairs
    on the teacher's device."""
    rows = data.train.cap_rows
    prompt_gen = torch.Generator().manual_seed(cfg.seed)
    pair_rows = rows[torch.randint(len(rows), (cfg.regression_pairs,), generator=prompt_gen, device="cpu")]
    captions = [data.captions.captions[int(r)] for r in pair_rows]
    pairs = regression_set(teacher, cfg, captions, out / "regression_pairs.safetensors")
    return pair_rows, {k: v.to(teacher.device) for k, v in pairs.items()}


def regression_loss(student: DiT, cfg: DMDConfig, captions, pair_rows: torch.Tensor,
                    pairs: dict[str, torch.Tensor], t0: float, gen: torch.Generator) -> torch.Tensor:
    """DMD1's regression: G's one-step output from a batch of the pairs' noise against the
    teacher's ODE output from it (`pair_rows`: the pairs' rows of the caption cache)."""
    pick = torch.randint(cfg.regression_pairs, (cfg.regression_batch,), generator=gen, device="cpu")
    device = pairs["z"].device
    ctx = student.prepare_text(captions.lookup(pair_rows[pick]).to(device))
    t = torch.full((len(pick),), t0, device=device)
    x = denoise(pairs["z"][pick], t, student.velocity(pairs["z"][pick], t, ctx))
    return F.mse_loss(x, pairs["x0"][pick])


def generator_sample(student: DiT, text, times: tuple[float, ...], shape: tuple[int, ...],
                     gen: torch.Generator, grad: bool) -> torch.Tensor:
    """G's output at a random step of its schedule from its own earlier steps (backward
    simulation; step 0 starts from noise). G reads the text through its own projection."""
    device = next(student.parameters()).device
    z = student.config.sigma_d * random(shape, gen, device, normal=True)
    i = int(torch.randint(len(times), (1,), generator=gen, device="cpu"))
    with torch.no_grad():
        ctx = student.prepare_text(text)
        x_in = few_step_sample(lambda x, t: student.velocity(x, t, ctx), z, times, gen, upto=i)
    t = torch.full((len(z),), times[i], device=device)
    with torch.set_grad_enabled(grad):
        ctx = student.prepare_text(text) if grad else ctx
        return denoise(x_in, t, student.velocity(x_in, t, ctx))


def gan_logits(fake: DiT, head: DiscriminatorHead, ctx):
    """The GAN head's real/fake logits of noisy latents, read from the fake denoiser's features."""
    s = fake.config.sigma_d
    return lambda x_t, t: head(fake(x_t / s, t, ctx, features=True)[1])


def fake_update(cfg: DMDConfig, fake: DiT, head: DiscriminatorHead, opt: torch.optim.Optimizer,
                x: torch.Tensor, text, real_batch, gen: torch.Generator, precision: str) -> dict[str, float]:
    """One update of the fake denoiser (flow loss on G's samples `x`) and, with the GAN, of the
    head: real latents from `real_batch(gen)` against the features of the flow loss's own forward
    pass. Forward passes run under `precision` autocast, the backward pass outside it."""
    s = fake.config.sigma_d
    features = {}
    with autocast(precision, x.device):
        ctx = fake.prepare_text(text)

        def fake_v(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out_, features["tokens"] = fake(x_t / s, t, ctx, features=True)
            return s * out_.float()

        loss = fake_loss(x, fake_v, gen, cfg.fake_times)
        logs = {"loss_fake": loss.item()}
        if cfg.gan:
            d_loss, d_logs = gan_discriminator_loss(real_batch(gen), head(features["tokens"]),
                                                    gan_logits(fake, head, ctx), gen)
            loss = loss + cfg.disc_weight * d_loss
            logs.update(d_logs)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    logs["grad_norm_fake"] = torch.nn.utils.clip_grad_norm_(fake.parameters(), cfg.grad_clip).item()
    opt.step()
    return logs


def student_loss(cfg: DMDConfig, student: DiT, fake: DiT, head: DiscriminatorHead, text,
                 real_v, times: tuple[float, ...], shape: tuple[int, ...], gen: torch.Generator,
                 regress: Callable[[torch.Generator], torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """G's loss on one batch: distribution matching (the teacher's guided velocity `real_v`
    against the fake denoiser's, frozen here), + the GAN term, + DMD1's regression `regress(gen)`."""
    fake.requires_grad_(False)
    fctx = fake.prepare_text(text)
    x = generator_sample(student, text, times, shape, gen, grad=True)
    loss, logs = generator_loss(x, real_v, partial(fake.velocity, ctx=fctx), gen, *cfg.dm_times)
    if cfg.gan:
        gan = gan_generator_loss(x, gan_logits(fake, head, fctx), gen)
        loss = loss + cfg.gan_weight * gan
        logs["loss_gan"] = gan.item()
    if regress is not None:
        reg = regress(gen)
        loss = loss + cfg.regression_weight * reg
        logs["loss_regression"] = reg.item()
    fake.requires_grad_(True)
    return loss, logs


def distill_dmd(cfg: DMDConfig, out: str | Path, resume: bool = False, stop_at: int | None = None,
                device: str | torch.device = "cpu") -> Path:
    """Run into folder `out` on `device` (cpu, cuda, cuda:N, auto); returns the student model
    folder (out/student). The data cache is built on the CPU; draws come from CPU generators
    (the same run on any device)."""
    out = Path(out)
    device = resolve_device(device)
    run = Run(out, cfg, resume, stop_at,
              fixed=("teacher", "method", "student_steps", "gan", "student_init", "student_depth",
                     "student_time"))
    teacher, data = teacher_and_data(cfg, device, load_diffusion_teacher)
    tm = teacher.transformer.requires_grad_(False)
    rows = data.train.cap_rows  # every caption of the training split (alternatives included)
    g = teacher_guidance(cfg, teacher)
    times = generator_times(cfg)
    precision = cfg.autocast_precision
    shape = (cfg.batch_size, tm.config.channels, tm.config.grid, tm.config.grid)

    torch.manual_seed(cfg.seed)
    student = initial_student(cfg, tm).train().requires_grad_(True)
    freeze(student, cfg.frozen)
    fake = copy.deepcopy(tm).train().requires_grad_(True)
    with torch.device("cpu"):  # initialised on the CPU: the same head on any device
        head = DiscriminatorHead(tm.config.dim).to(device)
    ema = copy.deepcopy(student).eval()
    opt_g = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=0.01)
    opt_f = torch.optim.AdamW([*fake.parameters(), *head.parameters()], lr=cfg.fake_lr, weight_decay=0.01)
    start = run.open({"student": student, "fake": fake, "head": head, "ema": ema},
                     {"student": opt_g, "fake": opt_f})
    student_pipe = Pipeline(ema, teacher.tokenizer, teacher.text_encoder, student_defaults(cfg))
    probe = list(cfg.sample_prompts)
    if start == 0:
        save_samples(out, teacher(probe, seed=0), probe, "teacher")
    regress = None
    if cfg.method == "dmd":
        pair_rows, pairs = regression_pairs(teacher, cfg, data, out)
        regress = partial(regression_loss, student, cfg, data.captions, pair_rows, pairs, times[0])
    uncond_one = teacher.uncond()

    def real_batch(gen: torch.Generator) -> torch.Tensor:  # the GAN's real side
        pick = torch.randint(len(data.train), (cfg.batch_size,), generator=gen, device="cpu")
        return token_latents(teacher.tokenizer, data.train.tokens[pick].to(device), tm.config.latent_scale)

    bar = run.steps(f"{cfg.method} x{cfg.student_steps}")
    for step in bar:
        gen = step_generator(cfg.seed, step, 0)
        run.set_lr(step, {opt_g: cfg.lr, opt_f: cfg.fake_lr})
        pick = torch.randint(len(rows), (cfg.batch_size,), generator=gen, device="cpu")
        text = data.captions.lookup(rows[pick]).to(device)
        with torch.no_grad(), autocast(precision, device):
            real_v = tm.guided(tm.prepare_text(text), uncond_one.repeat(cfg.batch_size), g)
        for _ in range(cfg.fake_updates):  # the fake denoiser (and the GAN head) track G
            with autocast(precision, device):
                x = generator_sample(student, text, times, shape, gen, grad=False)
            logs = fake_update(cfg, fake, head, opt_f, x, text, real_batch, gen, precision)

        with autocast(precision, device):
            loss, g_logs = student_loss(cfg, student, fake, head, text, real_v, times, shape, gen, regress)
        logs.update(g_logs)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip).item()
        opt_g.step()
        done = step + 1
        update_ema(ema, student, cfg.ema_decay, done)
        if run.due(done, cfg.log_every):
            run.log({"step": done, **logs})
            bar.set_postfix(fake=f"{logs['loss_fake']:.4f}", dm=f"{logs['dm_grad_norm']:.2f}")
        if run.due(done, cfg.eval_every):
            save_samples(out, student_pipe(probe, seed=0), probe, done)
        run.checkpoint(done)
    if not run.finish(ema):
        return out
    return save_student(out, cfg, ema, teacher)


def save_student(run: Path, cfg: DMDConfig, student: DiT, teacher: Pipeline) -> Path:
    card = (f"# {cfg.student_steps}-step {cfg.method.upper()} student of {cfg.teacher}\n\n"
            f"![samples](grid.png)\n\n`fastmuse distill dmd`: {cfg.steps} generator updates, batch "
            f"{cfg.batch_size}, {cfg.fake_updates} fake-denoiser updates each, GAN "
            f"{'on' if cfg.gan else 'off'}, real-score guidance {teacher_guidance(cfg, teacher)}; "
            f"`config.dmd.json` is the run's config, `metrics.jsonl` its log. {cfg.student_steps} network "
            f"evaluation(s) per image, no guidance pass (it is distilled in).\n")
    return save_run_student(run, cfg, student, teacher, student_defaults(cfg), card, "config.dmd.json")
