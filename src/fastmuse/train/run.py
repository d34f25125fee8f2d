"""What every training run shares, whatever it trains: `RunConfig` (the fields of the schedule
and the cadence), `Run` (the folder, resume, logging, checkpoints and `stop_at` around a loop
that keeps its own step body), the per-step random streams that make resume exact, the EMA
update, the DDP weights checksum and the fixed sample prompts.

A loop reads, nanoGPT-like:

    run = Run(out, cfg, resume, stop_at)
    start = run.open({"model": model}, {"model": opt})
    for step in run.steps("desc"):
        run.set_lr(step, {opt: cfg.lr})
        ... the step body ...
        done = step + 1
        if run.due(done, cfg.log_every): run.log({...})
        run.checkpoint(done)
    if run.finish(model): save the final model
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..config import Config, check_range
from ..errors import ConfigError
from .distributed import make_accelerator
from .log import JsonlLogger
from .schedule import lr_at
from .state import checkpoint_to_resume, load_training, prune_checkpoints, save_training

SAMPLE_PROMPTS = ("red heart", "smiling face with sunglasses", "pizza", "a blue circle",
                  "two yellow stars", "a red square left of a green triangle", "rocket", "cat face")


@dataclass
class RunConfig(Config):
    """The fields every trainer's config has (each subclass sets its own defaults)."""

    steps: int = 2000
    lr: float = 6e-4
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio after a linear warm-up
    warmup_steps: int = 100
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 250
    save_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "log_every", "eval_every", "save_every", "keep_checkpoints"):
            check_range(name, getattr(self, name), 1)
        check_range("lr", self.lr, 0.0)
        check_range("min_lr_ratio", self.min_lr_ratio, 0.0, 1.0)
        check_range("warmup_steps", self.warmup_steps, 0)


class Run:
    """One training run's folder and cadence. `out` gets config.json, metrics.jsonl (trimmed to
    the checkpoint on resume), samples/ and checkpoints/step-N (every `save_every` steps and at
    the end, the newest `keep_checkpoints` kept). `resume` needs a checkpoint, a fresh run a
    new folder; `fixed` names config fields a resumed run may not change. `stop_at` ends the
    run early (time boxes, tests), with a checkpoint. `acc`: the Accelerator of a run that
    uses one (DDP, mixed precision); without it the run is one process."""

    def __init__(self, out: str | Path, cfg: RunConfig, resume: bool = False, stop_at: int | None = None,
                 acc=None, fixed: tuple[str, ...] = ()) -> None:
        self.out, self.cfg, self.resume = Path(out), cfg, resume
        self.acc = acc if acc is not None else make_accelerator("no", 1)
        self.ckpt = checkpoint_to_resume(self.out, resume, self.acc)
        if self.ckpt is not None:
            saved = type(cfg).load(self.ckpt / "config.json")
            for name in fixed:
                if getattr(saved, name) != getattr(cfg, name):
                    raise ConfigError(f"--resume: {name} is {getattr(cfg, name)!r}, the run in {self.out} "
                                      f"was started with {getattr(saved, name)!r}")
        self.end = cfg.steps if stop_at is None else min(cfg.steps, stop_at)
        self.start = 0
        self.logger: JsonlLogger | None = None

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    def open(self, modules: Mapping[str, torch.nn.Module], optimizers: Mapping[str, torch.optim.Optimizer],
             generators: Mapping[str, torch.Generator] | None = None,
             buffers: Mapping[str, torch.Tensor] | None = None, cfg: RunConfig | None = None) -> int:
        """Load the checkpoint (if resuming) into what a checkpoint holds: `modules`, `optimizers`,
        `generators` and `buffers` (copied into in place); write config.json (`cfg`: the final
        config of a trainer that fills fields in from its data) and open the log. Returns the
        step the run starts from."""
        self.cfg = cfg or self.cfg
        self.modules, self.optimizers, self.generators = modules, optimizers, dict(generators or {})
        if self.ckpt is not None:
            self.start = load_training(self.ckpt, modules, optimizers, self.generators, buffers)["step"]
            self.acc.print(f"resuming from {self.ckpt} (step {self.start})")
        (self.out / "samples").mkdir(parents=True, exist_ok=True)
        if self.main:
            self.cfg.save(self.out / "config.json")
            self.logger = JsonlLogger(self.out / "metrics.jsonl", self.start if self.resume else None)
        return self.start

    def steps(self, desc: str) -> Iterable[int]:
        """The steps still to run, as a progress bar (`set_postfix` works on it)."""
        return tqdm(range(self.start, self.end), initial=self.start, total=self.end, desc=desc,
                    disable=not self.main)

    def set_lr(self, step: int, optimizers: Mapping[torch.optim.Optimizer, float]) -> float:
        """Each optimizer's learning rate at `step`: its base rate on the config's schedule.
        Returns the first one's."""
        rates = []
        for opt, base in optimizers.items():
            rates.append(lr_at(step, self.cfg, base))
            for group in opt.param_groups:
                group["lr"] = rates[-1]
        return rates[0]

    def due(self, done: int, every: int) -> bool:
        """Whether a periodic action runs after step `done`: every `every` steps and at the end."""
        return done % every == 0 or done == self.end

    def log(self, record: dict[str, Any]) -> None:
        if self.logger is not None:
            self.logger.log(record)

    def history(self) -> list[dict[str, Any]]:
        """The records logged so far (a resumed run: those up to its checkpoint)."""
        return self.logger.records() if self.logger is not None else []

    def checkpoint(self, done: int, buffers: Mapping[str, torch.Tensor] | None = None) -> None:
        """checkpoints/step-N when due (`buffers`: tensors outside any state_dict, as open's)."""
        if not self.due(done, self.cfg.save_every):
            return
        self.acc.wait_for_everyone()
        if self.main:
            save_training(self.out / "checkpoints" / f"step-{done:06d}", self.cfg, self.modules,
                          self.optimizers, self.generators, done, buffers=buffers)
            prune_checkpoints(self.out, self.cfg.keep_checkpoints)

    def finish(self, model: torch.nn.Module) -> bool:
        """After the loop. Under DDP every rank must hold the same weights: checked, logged.
        True on the main process of a run that reached `steps` (it then writes the final model)."""
        if self.acc.num_processes > 1:
            sums = self.acc.gather(torch.tensor([weights_checksum(model)], device=self.acc.device)).tolist()
            self.log({"step": self.end, "rank_checksums": sums, "ranks_agree": len(set(sums)) == 1})
            if len(set(sums)) != 1:
                raise RuntimeError(f"DDP ranks disagree on the weights after step {self.end}: {sums}")
        return self.main and self.end == self.cfg.steps


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Masks and caption choices of a (micro-)step: a function of (seed, step, rank) only,
    so resuming needs no generator state and ranks draw different masks."""
    digest = hashlib.blake2b(f"{seed}/{step}/{rank}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float, done: int) -> None:
    """EMA with warm-up: early on (`done` updates) the average follows the weights."""
    d = min(decay, (1 + done) / (10 + done))
    for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
        pe.lerp_(pm.detach(), 1 - d)


def weights_checksum(model: torch.nn.Module) -> int:
    """A 63-bit hash of every parameter's bytes (equal iff the weights are bit-identical)."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "little") >> 1
