"""`fastmuse distill dimo`: the Di[M]O training run (the method is in dimo.py).

Data-free but for prompts: the captions of the teacher's training data, encoded once into
the same cache the teacher trained from. Every random draw of step s (captions, initial
states, re-masks, samples, embedding noise) comes from a generator seeded by (seed, s), so
`--resume` continues exactly. The run folder holds config.json, metrics.jsonl (student and
auxiliary losses, the aux-teacher gap, the teacher's log-likelihood of student samples),
samples/, checkpoints/ and, at the end, student/: a model folder every command loads.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from ..config import check_interval, check_range
from ..convert import folder_files
from ..errors import ConfigError
from ..fast import autocast, resolve_device
from ..hub import resolve
from ..models.transformer import TextContext
from ..pipeline import Pipeline, SamplerDefaults
from ..sampling.maskgit import guidance_context, guided_logits
from ..train.losses import random_mask
from ..train.run import Run, step_generator, update_ema
from .common import (
    DistillConfig,
    freeze,
    save_samples,
    teacher_and_data,
    teacher_guidance,
)
from .dimo import DiMOSettings, aux_loss, generator_loss


@dataclass
class DiMOConfig(DistillConfig):
    precisions = ("no", "bf16")
    kind = "distill_dimo"
    teacher: str = "muse-128"  # a masked model (a converted aMUSEd/Meissonic one too)
    batch_size: int = 16
    steps: int = 600
    warmup_steps: int = 20
    eval_every: int = 100
    save_every: int = 50
    aux_updates: int = 2  # auxiliary updates per student update
    aux_lr: float = 2e-5
    init_mask_ratio: float = 0.6
    embed_noise: float = 0.1
    beta: float = 0.0
    label_smoothing: float = 0.0  # the reference's 0.1 biases the fixed point (dimo.py)
    # the target p_T is the teacher's guided softmax at this temperature: < 1 matches a teacher
    # that samples sharper than its softmax (muse-128 samples at 0.7)
    teacher_temperature: float = 1.0
    # the student's samples are re-masked at ratios of the teacher's cosine schedule truncated
    # to [lo, hi]: high ratios are where the teacher can say a whole object is missing
    remask_ratios: tuple[float, float] = (0.0, 1.0)
    # the target is guided only where the share of masked tokens lies in [lo, hi], conditional
    # elsewhere: muse-128 samples with guidance on its first steps only (mask ratios above ~0.7)
    guidance_ratios: tuple[float, float] = (0.0, 1.0)
    later_keys = (*DistillConfig.later_keys, "remask_ratios", "guidance_ratios")

    def validate(self) -> None:
        super().validate()
        check_range("aux_updates", self.aux_updates, 1)
        for name in ("init_mask_ratio", "beta", "label_smoothing"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("embed_noise", self.embed_noise, 0.0, 0.99)
        check_range("aux_lr", self.aux_lr, 0.0)
        check_range("teacher_temperature", self.teacher_temperature, 0.05, 10.0)
        check_interval("remask_ratios", self.remask_ratios, "the mask ratios of the re-masking")
        check_interval("guidance_ratios", self.guidance_ratios,
                       "the mask ratios at which the teacher is guided")


def load_teacher(name: str) -> Pipeline:
    folder = resolve(name)
    if (folder / "transformer").is_dir():
        raise ConfigError(f"teacher {name!r} is an aMUSEd/Meissonic folder as diffusers writes it; "
                          f"convert it first: fastmuse convert {name} OUT, then --teacher OUT")
    pipe = Pipeline.from_pretrained(folder)
    if pipe.family.name != "maskgit":
        raise ConfigError(f"teacher {name!r} is a {pipe.family.name} model; accepted: a masked "
                          "(MaskGIT-sampled) model")
    return pipe


def teacher_target(tm: torch.nn.Module, tokens: torch.Tensor, ctx: TextContext, guidance: float,
                   ratios: tuple[float, float], temperature: float) -> torch.Tensor:
    """The teacher's logits [B, N, K] the student is matched to, at `temperature`: guided at
    `guidance` (ctx from guidance_context) for the rows whose share of masked tokens lies in
    `ratios`, conditional only for the others."""
    if guidance <= 0:
        return guided_logits(tm, tokens, ctx, None) / temperature
    share = (tokens == tm.mask_id).flatten(1).float().mean(1)
    weight = guidance * ((share >= ratios[0]) & (share <= ratios[1])).float()
    return guided_logits(tm, tokens, ctx, weight.view(-1, 1, 1)) / temperature


@torch.no_grad()
def teacher_logprob(teacher: Pipeline, tokens: torch.Tensor, prompts: list[str], guidance: float) -> float:
    """Mean log p_teacher(token | rest, text) of token grids: how plausible the teacher finds them."""
    return teacher.caption_logprob(tokens, prompts, guidance, torch.Generator().manual_seed(0)).mean().item()


def student_defaults(cfg: DiMOConfig) -> SamplerDefaults:
    return SamplerDefaults(sampler="one_step", steps=1, guidance=0.0, temperature=1.0,
                           init_mask_ratio=cfg.init_mask_ratio, embed_noise=cfg.embed_noise)


def save_student(out: Path, cfg: DiMOConfig, student: torch.nn.Module, teacher: Pipeline,
                 metrics: Path) -> Path:
    """A model folder: the student transformer, the one-step sampler defaults, the run's metrics
    and, for a converted teacher, its tokenizer/ and text_encoder/."""
    pipe = Pipeline(student, teacher.tokenizer, teacher.text_encoder, student_defaults(cfg))
    src = resolve(cfg.teacher)
    files = {"metrics.jsonl": metrics.read_bytes()}
    for sub in ("tokenizer", "text_encoder"):
        if (src / sub).is_dir():
            files.update(folder_files(src / sub, sub))
    card = (f"# One-step Di[M]O student of {cfg.teacher}\n\n`fastmuse distill dimo`: {cfg.steps} student "
            f"updates, batch {cfg.batch_size}, {cfg.aux_updates} auxiliary updates each, teacher guidance "
            f"{teacher_guidance(cfg, teacher)}. One forward pass per image; config in the run folder.\n")
    return pipe.save_pretrained(out, card, files)


def reference_points(run: Run, teacher: Pipeline, student_pipe: Pipeline, probe: list[str], g: float) -> None:
    """At step 0: the teacher's log-likelihood of its own samples and of the untrained student's
    (the scale the run's `student_samples_logprob` climbs on), and the teacher's sample grid."""
    ref = teacher.generate_tokens(probe, seed=0)
    run.log({"step": 0, "teacher_samples_logprob": teacher_logprob(teacher, ref, probe, g),
             "student_samples_logprob": teacher_logprob(
                 teacher, student_pipe.generate_tokens(probe, seed=0), probe, g)})
    save_samples(run.out, teacher.decode(ref), probe, "teacher")


def distill_dimo(cfg: DiMOConfig, out: str | Path, resume: bool = False, stop_at: int | None = None,
                 device: str | torch.device = "cpu") -> Path:
    """Run into folder `out` on `device` (cpu, cuda, cuda:N, auto); returns the student model
    folder (out/student). The data cache is built on the CPU; draws come from CPU generators
    (the same run on any device)."""
    out = Path(out)
    device = resolve_device(device)
    run = Run(out, cfg, resume, stop_at, fixed=("teacher",))
    teacher, data = teacher_and_data(cfg, device, load_teacher)
    tm = teacher.transformer.requires_grad_(False)
    tcfg = tm.config
    rows = data.train.cap_rows  # every caption of the training split (alternatives included)
    empty = data.captions.lookup(data.captions.rows([""])).to(device)
    g = teacher_guidance(cfg, teacher)
    s = DiMOSettings(tcfg.codebook_size, tm.mask_id, cfg.init_mask_ratio, cfg.embed_noise, cfg.beta,
                     cfg.label_smoothing)

    torch.manual_seed(cfg.seed)
    student = copy.deepcopy(tm).train().requires_grad_(True)
    aux = copy.deepcopy(tm).train().requires_grad_(True)
    freeze(student, cfg.frozen)
    freeze(aux, cfg.frozen)
    ema = copy.deepcopy(tm).eval()
    opt_s = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    opt_a = torch.optim.Adam(aux.parameters(), lr=cfg.aux_lr)
    start = run.open({"student": student, "aux": aux, "ema": ema}, {"student": opt_s, "aux": opt_a})
    student_pipe = Pipeline(ema, teacher.tokenizer, teacher.text_encoder, student_defaults(cfg))
    probe = list(cfg.sample_prompts)
    if start == 0:
        reference_points(run, teacher, student_pipe, probe, g)

    remask = lambda tokens, gen: random_mask(tokens, tm.mask_id, gen, cfg.remask_ratios)  # noqa: E731
    grid, precision = tcfg.grid, cfg.autocast_precision
    blank = torch.full((cfg.batch_size, grid, grid), tm.mask_id, device=device)
    bar = run.steps("dimo")
    for step in bar:
        gen = step_generator(cfg.seed, step, 0)
        run.set_lr(step, {opt_s: cfg.lr, opt_a: cfg.aux_lr})
        pick = torch.randint(len(rows), (cfg.batch_size,), generator=gen, device="cpu")
        text = data.captions.lookup(rows[pick]).to(device)

        def logits_of(model: torch.nn.Module, tokens: torch.Tensor, text=text) -> torch.Tensor:
            out_ = model(tokens, text)
            return out_.float().reshape(len(tokens), -1, out_.shape[-1])

        with torch.no_grad(), autocast(precision, device):
            cond = tm.prepare_text(text)
            ctx = guidance_context(cond, tm.prepare_text(empty).repeat(len(blank)), g) if g > 0 else cond

        teacher_fn = partial(teacher_target, tm, ctx=ctx, guidance=g, ratios=cfg.guidance_ratios,
                             temperature=cfg.teacher_temperature)

        logs: dict[str, float] = {}
        for _ in range(cfg.aux_updates):
            with autocast(precision, device):
                loss, logs_a = aux_loss(student, aux, logits_of, remask, blank, s, gen)
            opt_a.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(aux.parameters(), cfg.grad_clip)
            opt_a.step()
        with autocast(precision, device):
            loss, logs = generator_loss(student, aux, teacher_fn, logits_of, remask, blank, s, gen)
        opt_s.zero_grad(set_to_none=True)
        loss.backward()
        logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip).item()
        opt_s.step()
        done = step + 1
        update_ema(ema, student, cfg.ema_decay, done)
        if run.due(done, cfg.log_every):
            run.log({"step": done, **logs_a, **logs})
            bar.set_postfix(tv=f"{logs['tv_aux_teacher']:.3f}", aux=f"{logs_a['loss_aux']:.3f}")
        if run.due(done, cfg.eval_every):
            tokens = student_pipe.generate_tokens(probe, seed=0)
            run.log({"step": done, "student_samples_logprob": teacher_logprob(teacher, tokens, probe, g)})
            save_samples(out, student_pipe.decode(tokens), probe, done)
        run.checkpoint(done)
    if not run.finish(ema):
        return out
    return save_student(out / "student", cfg, ema, teacher, out / "metrics.jsonl")
