"""Train a VQ tokenizer: `fastmuse train tokenizer --config cfg.json --out RUN`.

Random crops of folder datasets -> L1 + L2 reconstruction + quantiser loss (+ patch-GAN
after a warm-up). Dead codes are restarted on encoder outputs. Every `eval_every` steps:
val PSNR/SSIM/codebook usage to metrics.jsonl and a reconstruction grid. Checkpoints hold
model, optimizers and RNG; the batch at each step is a function of (seed, step), so a
resumed run continues exactly where the checkpoint left it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import check_range
from ..data.folder import ImageFolder
from ..errors import ConfigError
from ..eval.image_metrics import psnr
from ..eval.tokenizer import evaluate_recon, load_val_images, recon_grid
from ..tokenizer.model import VQConfig, VQTokenizer
from .distributed import make_accelerator
from .run import Run, RunConfig
from .sampler import StepBatchSampler
from .tokenizer_losses import PatchDiscriminator, discriminator_hinge, generator_hinge, reconstruction_loss


@dataclass
class TokenizerTrainConfig(RunConfig):
    kind = "train_tokenizer"
    model: VQConfig = field(default_factory=VQConfig)
    data: tuple[str, ...] = ("data/emoji", "data/shapes")  # folder datasets, train split
    val_data: str = "data/emoji"  # its val split is evaluated
    resolution: int = 128  # images are resized/center-cropped to this
    crop: int = 64  # then randomly cropped to this for training (the nets are convolutional)
    batch_size: int = 16
    steps: int = 20000
    lr: float = 3e-4
    warmup_steps: int = 200
    log_every: int = 25
    eval_every: int = 1000
    save_every: int = 1000
    weight_decay: float = 0.0
    grad_accum: int = 1
    l1_weight: float = 1.0
    l2_weight: float = 1.0
    gan_weight: float = 0.0  # 0 = no discriminator
    gan_start: int = 10000
    gan_warmup: int = 1000  # the GAN weight ramps in linearly over these steps
    disc_lr: float = 1e-4
    restart_every: int = 200  # dead-code restarts (0 = never); none in the last 20% of steps
    num_val: int = 64
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    num_workers: int = 0
    # a tokenizer folder / bundled name whose weights (codebook and EMA state included) start
    # the run; its config must match `model` except for padding and norm groups ("": from scratch)
    init_from: str = ""

    later_keys = ("init_from",)

    def validate(self) -> None:
        super().validate()
        for name in ("batch_size", "grad_accum", "num_val"):
            check_range(name, getattr(self, name), 1)
        check_range("crop", self.crop, self.model.downsample, self.resolution)
        if self.crop % self.model.downsample:
            raise ConfigError(f"'crop' is {self.crop}; accepted: a multiple of the tokenizer's "
                              f"downsampling {self.model.downsample}")
        if self.gan_weight > 0 and self.crop < 32:
            raise ConfigError(f"'crop' is {self.crop}; the discriminator needs crop >= 32 "
                              "(or gan_weight 0)")
        if not self.data:
            raise ConfigError("'data' is empty; accepted: one or more dataset folders")


def gan_weight_at(step: int, cfg: TokenizerTrainConfig) -> float:
    if cfg.gan_weight <= 0 or step < cfg.gan_start:
        return 0.0
    return cfg.gan_weight * min(1.0, (step - cfg.gan_start + 1) / max(1, cfg.gan_warmup))


def random_crops(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    if size == h == w:
        return x
    offsets = torch.randint(0, min(h, w) - size + 1, (b, 2), generator=gen, device="cpu").tolist()
    return torch.stack([x[i, :, oy:oy + size, ox:ox + size] for i, (oy, ox) in enumerate(offsets)])


# fields that change what a tokenizer computes but not its tensors' shapes
WARM_START_FREE = ("padding", "norm_num_groups", "flat_snap")


def warm_start_tokenizer(model: VQTokenizer, source: str) -> str:
    """Copy a trained tokenizer's weights into `model` (same tensors; padding and norm groups
    may differ: the run then adapts the weights to them)."""
    src = VQTokenizer.from_pretrained(source)
    free = {k: getattr(model.config, k) for k in WARM_START_FREE}
    if src.config.replace(**free) != model.config:
        raise ConfigError(f"init_from {source!r}: its config differs from 'model' in more than "
                          f"{' and '.join(WARM_START_FREE)}; accepted: a tokenizer of the same "
                          "channels, latent size and codebook")
    model.load_state_dict(src.state_dict())
    changed = [f"{k} {getattr(src.config, k)} -> {v}" for k, v in free.items()
               if getattr(src.config, k) != v]
    return f"warm start from {source}" + (f" ({', '.join(changed)})" if changed else "")


def image_batches(cfg: TokenizerTrainConfig, start: int, acc):
    """This process's training batches from step `start` on; (seed, step, rank) decide each, so
    a resumed run reads what the uninterrupted one would have."""
    train_ds = torch.utils.data.ConcatDataset(
        [ImageFolder(d, cfg.resolution, split="train") for d in cfg.data])
    sampler = StepBatchSampler(len(train_ds), cfg.batch_size, cfg.seed, start * cfg.grad_accum,
                               acc.process_index, acc.num_processes)
    with torch.device("cpu"):  # its base seed: a draw of the global CPU generator
        return iter(torch.utils.data.DataLoader(train_ds, batch_sampler=sampler, num_workers=cfg.num_workers))


def train_tokenizer(cfg: TokenizerTrainConfig, out: str | Path, resume: bool = False,
                    stop_at: int | None = None) -> Path:
    """Train into run folder `out` (metrics.jsonl, samples/, checkpoints/, tokenizer/).
    `resume` continues from the newest checkpoint; `stop_at` ends early (tests, time boxes)."""
    acc = make_accelerator(cfg.mixed_precision, cfg.grad_accum)
    run = Run(out, cfg, resume, stop_at, acc)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # crops and code restarts

    # Setup on the CPU, named: the same initial weights on any device (Accelerate moves the
    # models); the steps then create nothing without naming a device (tests/test_device.py).
    with torch.device("cpu"):
        model = VQTokenizer(cfg.model).train()
        if cfg.init_from and run.ckpt is None:
            acc.print(warm_start_tokenizer(model, cfg.init_from))
        disc = PatchDiscriminator() if cfg.gan_weight > 0 else None
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        modules: dict[str, torch.nn.Module] = {"model": model}
        optimizers: dict[str, torch.optim.Optimizer] = {"model": opt}
        if disc is not None:
            dopt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=(0.5, 0.9))
            modules["disc"], optimizers["disc"] = disc, dopt
        start = run.open(modules, optimizers, {"data": gen}, {"code_usage": model.quantize.usage})

    model, opt = acc.prepare(model, opt)
    if disc is not None:
        disc, dopt = acc.prepare(disc, dopt)
    raw = acc.unwrap_model(model)

    batches = image_batches(cfg, start, acc)
    val_images = load_val_images(cfg.val_data, cfg.resolution, cfg.num_val)
    bar = run.steps("tokenizer")
    for step in bar:
        lr = run.set_lr(step, {opt: cfg.lr})
        gw = gan_weight_at(step, cfg)
        logs: dict[str, float] = {}
        for _ in range(cfg.grad_accum):
            x = random_crops(next(batches)["image"], cfg.crop, gen).to(acc.device)
            with acc.accumulate(model):
                recon, qloss, _ = model(x)
                rec = reconstruction_loss(recon.float(), x, cfg.l1_weight, cfg.l2_weight)
                loss = rec + qloss
                if gw > 0:
                    g_loss = generator_hinge(disc(recon))
                    loss = loss + gw * g_loss
                    logs["g_loss"] = g_loss.item()
                acc.backward(loss)
                if acc.sync_gradients:
                    logs["grad_norm"] = acc.clip_grad_norm_(params, cfg.grad_clip).item()
                opt.step()
                opt.zero_grad(set_to_none=True)
            if gw > 0:
                with acc.accumulate(disc):
                    d_loss = discriminator_hinge(disc(x), disc(recon.detach()))
                    acc.backward(d_loss)
                    dopt.step()
                    dopt.zero_grad(set_to_none=True)
                logs["d_loss"] = d_loss.item()
            logs.update(loss=loss.item(), rec=rec.item(), qloss=qloss.item(),
                        batch_psnr=psnr(recon.detach(), x).mean().item())
        done = step + 1
        if cfg.restart_every and done % cfg.restart_every == 0 and done <= 0.8 * cfg.steps:
            usage = raw.quantize.take_usage()
            with torch.no_grad():
                logs["restarted"] = raw.quantize.restart_dead(raw.encode_latents(x), usage, gen)
        if run.due(done, cfg.log_every):
            run.log({**logs, "step": done, "lr": lr, "gan_weight": gw,
                     "codes_used_window": int((raw.quantize.usage > 0).sum())})
            bar.set_postfix(loss=f"{logs['loss']:.4f}", psnr=f"{logs['batch_psnr']:.2f}")
        if run.main and run.due(done, cfg.eval_every):
            ev = evaluate_recon(raw, val_images)
            recon_grid(val_images, ev.pop("recon")).save(run.out / "samples" / f"step-{done:06d}.png")
            run.log({"step": done, **{f"val_{k}": v for k, v in ev.items()}})
        run.checkpoint(done, buffers={"code_usage": raw.quantize.usage})
    if run.finish(raw):
        raw.save_pretrained(run.out / "tokenizer")
    acc.wait_for_everyone()
    return run.out / "tokenizer"
