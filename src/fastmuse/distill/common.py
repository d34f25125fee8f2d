"""What every distillation run (Di[M]O, DMD, sCM) shares: the config fields, the resume check,
the per-step learning rates and the teacher's guidance."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config, check_range
from ..data.images import make_grid
from ..data.tokens import TokenData, build_token_data
from ..errors import ConfigError
from ..pipeline import Pipeline, SamplerDefaults
from ..train.log import JsonlLogger
from ..train.run import SAMPLE_PROMPTS
from ..train.schedule import lr_at
from ..train.state import checkpoint_to_resume, load_training, prune_checkpoints, save_training


@dataclass
class DistillConfig(Config):
    teacher: str = ""  # bundled name or model folder
    teacher_guidance: float | None = None  # None: the teacher's default
    data: tuple[str, ...] = ("data/emoji", "shapes:0")  # whose captions (and latents) the run uses
    shapes_train: int = 6000  # as the teacher's training config, so its token cache is reused
    shapes_val: int = 100
    cache_dir: str = "data/cache"
    batch_size: int = 8
    steps: int = 300  # student updates
    lr: float = 2e-5
    warmup_steps: int = 10
    min_lr_ratio: float = 1.0  # constant after warm-up, as the references
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    log_every: int = 10
    eval_every: int = 50
    save_every: int = 25
    keep_checkpoints: int = 2
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    seed: int = 0

    def validate(self) -> None:
        for name in ("batch_size", "steps", "log_every", "eval_every", "save_every", "keep_checkpoints",
                     "shapes_train", "shapes_val"):
            check_range(name, getattr(self, name), 1)
        check_range("lr", self.lr, 0.0)
        check_range("ema_decay", self.ema_decay, 0.0, 1.0)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        if self.teacher_guidance is not None:
            check_range("teacher_guidance", self.teacher_guidance, 0.0)


def resume_checkpoint(out: Path, resume: bool, cfg: DistillConfig, fixed: tuple[str, ...]) -> Path | None:
    """The checkpoint to continue from (None: a fresh run); refuses a change of the `fixed`
    fields, which define the networks and the objective."""
    from ..train.distributed import make_accelerator

    ckpt = checkpoint_to_resume(out, resume, make_accelerator("no", 1))
    if ckpt is not None:
        saved = type(cfg).load(ckpt / "config.json")
        for name in fixed:
            if getattr(saved, name) != getattr(cfg, name):
                raise ConfigError(f"--resume: {name} is {getattr(cfg, name)!r}, the run in {out} was started "
                                  f"with {getattr(saved, name)!r}")
    return ckpt


def open_run(out: Path, cfg: DistillConfig, ckpt: Path | None, modules: dict, optimizers: dict,
             resume: bool) -> tuple[int, JsonlLogger]:
    """The step to start from (the checkpoint loaded into `modules` and `optimizers`), with the
    run folder's config.json written, samples/ made and metrics.jsonl opened (trimmed to it)."""
    start = load_training(ckpt, modules, optimizers, {})["step"] if ckpt is not None else 0
    (out / "samples").mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.json")
    return start, JsonlLogger(out / "metrics.jsonl", resume_step=start if resume else None)


def due(done: int, every: int, cfg: DistillConfig) -> bool:
    """Whether a periodic action (log, grid, checkpoint) runs after update `done`: every
    `every` updates, and after the last."""
    return done % every == 0 or done == cfg.steps


def save_checkpoint(out: Path, cfg: DistillConfig, modules: dict, optimizers: dict, done: int) -> None:
    """checkpoints/step-N when due, keeping the newest `keep_checkpoints`."""
    if due(done, cfg.save_every, cfg):
        save_training(out / "checkpoints" / f"step-{done:06d}", cfg, modules, optimizers, {}, done)
        prune_checkpoints(out, cfg.keep_checkpoints)


def set_lrs(step: int, cfg: DistillConfig, optimizers: dict[torch.optim.Optimizer, float]) -> None:
    """Each optimizer's learning rate at `step`: its base rate on the config's schedule."""
    for opt, base in optimizers.items():
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.replace(lr=base))


def teacher_guidance(cfg: DistillConfig, teacher: Pipeline) -> float:
    return teacher.defaults.guidance if cfg.teacher_guidance is None else cfg.teacher_guidance


def load_diffusion_teacher(name: str) -> Pipeline:
    """The DMD and sCM teacher: a DiT in TrigFlow form, sampled by its ODE."""
    pipe = Pipeline.from_pretrained(name)
    if pipe.family.name != "ode":
        raise ConfigError(f"teacher {name!r} is a {pipe.family.name} model; accepted: a diffusion model "
                          "in TrigFlow form "
                          "sampled by its ODE (kind 'dit', e.g. dit-128)")
    return pipe


def samples_file(run: Path, name: str | int) -> Path:
    """run/samples/NAME.png (e.g. teacher.png), or step-000123.png for a step."""
    return run / "samples" / (f"step-{name:06d}.png" if isinstance(name, int) else f"{name}.png")


def save_samples(run: Path, images: list, prompts: list[str], name: str | int) -> None:
    """The probe prompts' images as one captioned grid (see samples_file)."""
    make_grid(images, ncols=min(len(prompts), 8), captions=prompts).save(samples_file(run, name))


def save_run_student(run: Path, cfg: DistillConfig, student: torch.nn.Module, teacher: Pipeline,
                     defaults: SamplerDefaults, card: str, config_name: str) -> Path:
    """run/student: a model folder with the run's config (as `config_name`), metrics.jsonl and
    last sample grid (grid.png, which the card shows)."""
    pipe = Pipeline(student, teacher.tokenizer, teacher.text_encoder, defaults)
    files = {"metrics.jsonl": (run / "metrics.jsonl").read_bytes(),
             config_name: (run / "config.json").read_bytes(),
             "grid.png": samples_file(run, cfg.steps).read_bytes()}
    return pipe.save_pretrained(run / "student", card, files)


def diffusion_teacher_and_data(cfg: DistillConfig, device: torch.device) -> tuple[Pipeline, TokenData]:
    """The DMD / sCM teacher on `device` and its training data (tokens + caption embeddings),
    both set up on the CPU, by name: the same run on any device."""
    with torch.device("cpu"):
        teacher = load_diffusion_teacher(cfg.teacher)
        data = build_token_data(list(cfg.data), teacher.tokenizer, teacher.text_encoder, teacher.resolution,
                                cfg.cache_dir, cfg.shapes_train, cfg.shapes_val,
                                tokenizer_id=teacher.transformer.config.tokenizer)
    return teacher.to(device), data
