"""What every distillation run (Di[M]O, DMD, sCM) shares besides the run skeleton (train/run.py):
the config fields, the teacher and its data, its guidance, sample grids and the student folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..config import check_choice, check_range
from ..data.images import make_grid
from ..data.tokens import TokenData, build_token_data
from ..errors import ConfigError
from ..hub import resolve
from ..pipeline import Pipeline, SamplerDefaults
from ..train.run import SAMPLE_PROMPTS, RunConfig


@dataclass
class DistillConfig(RunConfig):
    later_keys = ("mixed_precision", "frozen")  # configs written before them load
    precisions: ClassVar[tuple[str, ...]] = ("no",)  # accepted mixed_precision values
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
    ema_decay: float = 0.99
    eval_every: int = 50
    save_every: int = 25
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    # "bf16" (where `precisions` has it): forward passes under bf16 autocast, several times
    # faster on AMX CPUs and GPUs, much slower on AVX2 CPUs (benchmarks/bf16_matmul.py)
    mixed_precision: str = "no"
    # parameters (names or name prefixes, e.g. "row_emb", "head.bias") of the student kept at the
    # teacher's values (Di[M]O's auxiliary model too); the Di[M]O reference freezes embeddings and
    # output bias
    frozen: tuple[str, ...] = ()

    @property
    def autocast_precision(self) -> str:
        """The `fast.autocast` precision of the run's forward passes."""
        return "bf16" if self.mixed_precision == "bf16" else "fp32"

    def validate(self) -> None:
        super().validate()
        check_choice("mixed_precision", self.mixed_precision, self.precisions)
        for name in ("batch_size", "shapes_train", "shapes_val"):
            check_range(name, getattr(self, name), 1)
        check_range("ema_decay", self.ema_decay, 0.0, 1.0)
        if self.teacher_guidance is not None:
            check_range("teacher_guidance", self.teacher_guidance, 0.0)


def freeze(model: torch.nn.Module, names: tuple[str, ...]) -> None:
    """Stop gradients to the parameters named by `names` (a full name or a prefix before a dot)."""
    params = dict(model.named_parameters())
    for name in names:
        hits = [k for k in params if k == name or k.startswith(name + ".")]
        if not hits:
            top = sorted({k.split(".")[0] for k in params})
            raise ConfigError(f"frozen names {name!r}, which is no parameter of the teacher; accepted: "
                              f"parameter names or prefixes such as {', '.join(top)}")
        for k in hits:
            params[k].requires_grad_(False)


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


def teacher_and_data(cfg: DistillConfig, device: torch.device,
                     load: Callable[[str], Pipeline]) -> tuple[Pipeline, TokenData]:
    """The teacher (`load(cfg.teacher)`, which checks its family) on `device` and its training
    data (tokens + caption embeddings), both set up on the CPU, by name: the same run on any
    device. A model folder with its own tokenizer/ (a converted one) keys the token cache by it,
    as Pipeline.from_pretrained loads it."""
    with torch.device("cpu"):
        teacher = load(cfg.teacher)
        inside = resolve(cfg.teacher) / "tokenizer"
        tokenizer_id = str(inside) if inside.is_dir() else teacher.transformer.config.tokenizer
        data = build_token_data(list(cfg.data), teacher.tokenizer, teacher.text_encoder, teacher.resolution,
                                cfg.cache_dir, cfg.shapes_train, cfg.shapes_val, tokenizer_id=tokenizer_id)
    return teacher.to(device), data
