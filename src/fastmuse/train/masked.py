"""Masked-token training of the text-to-image transformer: `fastmuse train transformer`.

Images and captions are pre-encoded once (data/tokens.py). Each step: pick a mask ratio
per image from the cosine schedule, replace that many random tokens by MASK, predict them
with the caption's embedding (dropped to "" with `caption_dropout`, which is what
classifier-free guidance needs), cross-entropy on the masked tokens only. AdamW with
warm-up + cosine decay, an EMA copy of the weights (what gets sampled and saved), exact
resume: the batch, its masks and caption choices are functions of (seed, step, rank).

A config whose model is an `ar_transformer` trains the autoregressive baseline the same way
(same data, captions, optimiser, EMA), with next-token cross-entropy on every token instead.
A `dit` model is the diffusion teacher: the same tokens become its continuous data (their
codebook vectors, models/dit.py) and the loss is TrigFlow's flow loss (sampling/trigflow.py)
at sCM's log-normal times.

Conditions beyond the text (models/transformer.py): a model with `micro_conds` trains on a
cache with views (images read at `read_resolution`, + `crops` random crops each, data/tokens.py)
whose micro-conditions it sees, all dropped to unknown with `micro_dropout`; a
super-resolution model (`low_res_grid`) reads, for each image, the tokens of the same image
downscaled to low_res_grid * downsampling px. `init_from` warm-starts from a trained model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from ..config import check_choice, check_range
from ..data.images import make_grid, to_pil
from ..data.tokens import TokenData, TokenSplit, build_token_data
from ..errors import ConfigError
from ..eval.shapes_suite import CATEGORIES as SHAPES_CATEGORIES
from ..models import TRANSFORMERS, DiT, DiTConfig, MMDiTConfig, Transformer, UViTConfig
from ..models.autoregressive import ARTransformerConfig
from ..models.dit import latent_scale, token_latents
from ..models.transformer import MICRO_CONDS, MaskedTransformerConfig, low_res_grid, micro_names
from ..sampling.families import SamplerDefaults, SamplingRun, family_for
from ..sampling.maskgit import check_guidance_interval
from ..sampling.noise import random
from ..text.cache import EmbeddingCache
from .distributed import make_accelerator
from .losses import diffusion_loss, loss_inputs, masked_loss, training_loss
from .run import SAMPLE_PROMPTS, Run, RunConfig, step_generator, update_ema
from .sampler import StepBatchSampler
from .warm_start import warm_start


@dataclass
class TransformerTrainConfig(RunConfig):
    kind = "train_transformer"
    model: MaskedTransformerConfig | ARTransformerConfig | UViTConfig | MMDiTConfig | DiTConfig = field(
        default_factory=MaskedTransformerConfig)
    data: tuple[str, ...] = ("data/emoji", "shapes:0")  # folders / shards / shapes:SEED
    repeats: tuple[int, ...] = (1, 1)  # per source: times its samples appear per epoch
    shapes_train: int = 8000  # scenes taken from each shapes:SEED stream
    shapes_val: int = 100
    tokenizer: str = "tokenizer-v2"  # bundled name or folder; models keep the one they were trained on
    text_encoder: str = "minilm"
    cache_dir: str = "data/cache"
    batch_size: int = 32  # per process
    weight_decay: float = 0.01
    grad_accum: int = 1
    label_smoothing: float = 0.1
    # "token": cross-entropy averaged over every masked token of the batch (MaskGIT), so a
    # nearly fully masked grid weighs ~10x a nearly complete one; "image": averaged per grid,
    # then over grids, so every mask ratio weighs the same
    loss_weighting: Literal["token", "image"] = "token"
    caption_dropout: float = 0.1
    alt_caption_prob: float = 0.2  # use one of a sample's alternative captions
    read_resolution: int = 0  # px the images are read at before views are made (0: model.resolution)
    crops: int = 0  # random crop views per image (micro-conditioned models)
    micro_dropout: float = 0.1  # drop a sample's micro-conditions to unknown
    init_from: str = ""  # a transformer folder / bundled name to warm-start from ("": from scratch)
    ema_decay: float = 0.999
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    sample_steps: int = 12
    sample_guidance: float = 3.0
    # the rest of the sampler the grids and the shapes curve use: set them to what the model
    # will ship with (`transformer export --temperature --guidance-interval`), or the curve
    # measures another sampler (muse-128's run logged 0.24 at temperature 1, guided throughout,
    # where its exported sampler, 0.7 and the first half guided, scores 0.87)
    sample_temperature: float = 1.0
    sample_guidance_interval: tuple[float, float] = (0.0, 1.0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    # shapes-suite categories measured at every eval (EMA weights, the run's `sampler()`):
    # the learning curve of what the images show, not only of token accuracy; () = off
    eval_shapes: tuple[str, ...] = ()
    eval_shapes_seeds: int = 2

    later_keys = ("eval_shapes", "eval_shapes_seeds", "loss_weighting", "sample_temperature",
                  "sample_guidance_interval")

    def validate(self) -> None:
        super().validate()
        for name in ("batch_size", "grad_accum", "sample_steps", "shapes_train", "shapes_val"):
            check_range(name, getattr(self, name), 1)
        for name in ("caption_dropout", "alt_caption_prob", "label_smoothing", "ema_decay", "micro_dropout"):
            check_range(name, getattr(self, name), 0.0, 1.0)
        check_range("eval_shapes_seeds", self.eval_shapes_seeds, 1, 16)
        check_range("sample_temperature", self.sample_temperature, 0.0)
        check_guidance_interval(self.sample_guidance_interval, "sample_guidance_interval")
        for c in self.eval_shapes:
            check_choice("eval_shapes entry", c, SHAPES_CATEGORIES)
        check_range("read_resolution", self.read_resolution, 0)
        check_range("crops", self.crops, 0)
        if not self.data:
            raise ConfigError("'data' is empty; accepted: one or more data sources")
        if len(self.repeats) != len(self.data) or min(self.repeats) < 1:
            raise ConfigError(f"'repeats' is {list(self.repeats)}; accepted: one integer >= 1 per "
                              f"entry of 'data' ({len(self.data)})")

    def sampler(self) -> SamplerDefaults:
        """The sampler of the run's grids and shapes curve."""
        return SamplerDefaults(steps=self.sample_steps, guidance=self.sample_guidance,
                               temperature=self.sample_temperature,
                               guidance_interval=list(self.sample_guidance_interval))


def pick_captions(split: TokenSplit, idx: list[int], cfg: TransformerTrainConfig, empty_row: int,
                  gen: torch.Generator) -> torch.Tensor:
    """Main caption, an alternative with alt_caption_prob, "" with caption_dropout."""
    u = random((len(idx), 3), gen)
    rows = []
    for j, i in enumerate(idx):
        options = split.caption_rows(i)
        pick = 0
        if len(options) > 1 and u[j, 0] < cfg.alt_caption_prob:
            pick = 1 + int(u[j, 1] * (len(options) - 1))
        rows.append(empty_row if u[j, 2] < cfg.caption_dropout else int(options[pick]))
    return torch.tensor(rows, device="cpu")  # rows of the (CPU) caption cache


def batch_conditions(mcfg, split: TokenSplit, low: TokenSplit | None, idx: list[int],
                     gen: torch.Generator | None = None, dropout: float = 0.0) -> dict[str, torch.Tensor]:
    """A masked model's inputs besides tokens and text for rows `idx` of `split`: `micro`
    [B, K] (each row all-unknown with probability `dropout`) and `low_res` (rows of `low`)."""
    cond = {}
    names = micro_names(mcfg)
    if names:
        if split.micro is None:
            raise ConfigError("the model has micro-conditions but the token cache holds none")
        micro = split.micro[idx][:, [MICRO_CONDS.index(n) for n in names]]
        if dropout:
            micro[random((len(idx),), gen, micro.device) < dropout] = float("nan")
        cond["micro"] = micro
    if low_res_grid(mcfg):
        cond["low_res"] = low.tokens[idx]
    return cond


VAL_TIMES = (-1.0, 1.4)  # held-out flow loss at sCM's times whatever a run trains on: comparable


@torch.no_grad()
def evaluate_diffusion(model: DiT, tokenizer, split: TokenSplit, captions: EmbeddingCache,
                       groups: dict[str, range], batch_size: int = 64, seed: int = 1234) -> dict[str, float]:
    """Held-out flow loss per group and overall, with the same times and noise every call."""
    out, total, device = {}, 0.0, next(model.parameters()).device
    for name, rng in groups.items():
        gen, loss = torch.Generator().manual_seed(seed), 0.0
        for start in range(rng.start, rng.stop, batch_size):
            idx = list(range(start, min(start + batch_size, rng.stop)))
            text = captions.lookup(torch.stack([split.caption_rows(i)[0] for i in idx])).to(device)
            x0 = token_latents(tokenizer, split.tokens[idx].to(device), model.config.latent_scale)
            batch_loss = diffusion_loss(model, model.config, x0, text, gen, times=VAL_TIMES)
            loss += len(idx) * float(batch_loss)
        out[f"val_loss_{name}"] = loss / len(rng)
        total += loss
    out["val_loss"] = total / sum(len(r) for r in groups.values())
    return out


@torch.no_grad()
def evaluate_masked(model: Transformer, split: TokenSplit, captions: EmbeddingCache,
                    groups: dict[str, range], batch_size: int = 64, seed: int = 1234,
                    caption_row: int | None = None, low: TokenSplit | None = None) -> dict[str, float]:
    """Held-out masked-token loss/accuracy with fixed masks (same every call), per group and
    overall; `acc50` masks exactly half of each grid. `caption_row` replaces every caption
    (e.g. the "" row: how much the text helps). An autoregressive model gets its next-token
    loss/accuracy (teacher forcing) and no acc50. A micro-conditioned model sees each row's
    micro-conditions, a super-resolution model the rows of `low`."""
    out: dict[str, float] = {}
    causal, device = model.config.objective == "autoregressive", next(model.parameters()).device
    totals: dict[str, list[float]] = {k: [] for k in ("loss", "acc") + (() if causal else ("acc50",))}
    for name, rng in groups.items():
        gen = torch.Generator().manual_seed(seed)
        sums = dict.fromkeys(totals, 0.0)
        for start in range(rng.start, rng.stop, batch_size):
            idx = list(range(start, min(start + batch_size, rng.stop)))
            tokens = split.tokens[idx].to(device)
            rows = torch.stack([split.caption_rows(i)[0] for i in idx])
            text = captions.lookup(rows if caption_row is None else torch.full_like(rows, caption_row))
            text = text.to(device)
            cond = {k: v.to(device) for k, v in batch_conditions(model.config, split, low, idx).items()}
            ctx = model.context(text, **cond) if cond else model.prepare_text(text)
            inputs, mask = loss_inputs(tokens, model.config, gen)
            loss, acc = masked_loss(model, tokens, mask, inputs, ctx)
            sums["loss"] += float(loss) * len(idx)
            sums["acc"] += float(acc) * len(idx)
            if causal:
                continue
            half = random(tokens.shape, gen, device).flatten(1).argsort(1).argsort(1) < tokens[0].numel() // 2
            half = half.view_as(tokens)
            _, acc50 = masked_loss(model, tokens, half, torch.where(half, model.mask_id, tokens), ctx)
            sums["acc50"] += float(acc50) * len(idx)
        for k in sums:
            out[f"val_{k}_{name}"] = sums[k] / len(rng)
            totals[k].append(sums[k])
    n = sum(len(r) for r in groups.values())
    out.update({f"val_{k}": sum(v) / n for k, v in totals.items()})
    return out


@torch.no_grad()
def sample_grid(model: Transformer, tokenizer, encoder, prompts: tuple[str, ...], defaults: SamplerDefaults,
                seed: int = 0, low_res: torch.Tensor | None = None):
    """One image per prompt (a super-resolution model: from the grids `low_res`, one per prompt)."""
    device = next(model.parameters()).device
    text = encoder.encode(list(prompts))
    if low_res is not None:  # guidance drops the text only
        low_res = low_res.to(device)
        cond = model.context(text, low_res=low_res)
        uncond = model.context(encoder.encode([""] * len(prompts)), low_res=low_res)
    else:
        cond = model.prepare_text(text)
        uncond = model.prepare_text(encoder.encode([""] * len(prompts)))
    gen = torch.Generator().manual_seed(seed)
    family = family_for(model, defaults)
    steps, guidance = defaults.steps, defaults.guidance
    opts = family.check(defaults, steps, guidance, family.options(defaults))
    run = SamplingRun(family, model, cond, uncond, steps, guidance, opts, gen)
    images = family.decode(tokenizer, model, run.fill(family.start(model, len(prompts), gen, device)))
    return make_grid([to_pil(im) for im in images.clamp(-1, 1)], ncols=min(len(prompts), 8),
                     captions=list(prompts))


def source_ranges(counts: list[int]) -> list[range]:
    """Each source's rows in a split that concatenates the sources in order."""
    starts = [0]
    for c in counts:
        starts.append(starts[-1] + c)
    return [range(a, b) for a, b in zip(starts, starts[1:], strict=False)]


def val_groups(data: TokenData) -> dict[str, range]:
    """Val rows per source, named by the source ("emoji", "shapes0")."""
    names = [s.rstrip("/").split("/")[-1].replace(":", "") for s in data.info["sources"]]
    return {n: r for n, r in zip(names, source_ranges(data.info["counts"]["val"]), strict=True) if len(r)}


def shapes_curve_point(model: Transformer, tokenizer, encoder, cfg: TransformerTrainConfig) -> dict:
    """Shapes-suite accuracy of `model` on cfg.eval_shapes, as metrics.jsonl keys shapes_*."""
    from ..eval.suite import EvalSettings, shapes_accuracy
    from ..pipeline import Pipeline

    pipe = Pipeline(model, tokenizer, encoder, cfg.sampler())
    accuracy, _, _ = shapes_accuracy(pipe, EvalSettings(seeds=cfg.eval_shapes_seeds), cfg.eval_shapes)
    return {f"shapes_{k}": v for k, v in accuracy.items()}


def training_data(cfg: TransformerTrainConfig, tokenizer, encoder) -> tuple[TokenData, TokenData | None]:
    """The token cache of `cfg` (with views if the model has micro-conditions or cfg asks for
    them), and for a super-resolution model the low-res cache, row for row the same images."""
    m = cfg.model
    res = m.resolution
    views = None
    if micro_names(m) or cfg.read_resolution or cfg.crops:
        views = (cfg.read_resolution or res, cfg.crops)
    data = build_token_data(list(cfg.data), tokenizer, encoder, res, cfg.cache_dir, cfg.shapes_train,
                            cfg.shapes_val, tokenizer_id=cfg.tokenizer, views=views)
    if not low_res_grid(m):
        return data, None
    if views is not None:
        raise ConfigError("a super-resolution model trains on whole images: leave 'read_resolution' at 0 "
                          "and 'crops' at 0")
    low = build_token_data(list(cfg.data), tokenizer, encoder, m.low_res_grid * tokenizer.downsample,
                           cfg.cache_dir, cfg.shapes_train, cfg.shapes_val, tokenizer_id=cfg.tokenizer,
                           views=(res, 0))
    if low.info["counts"] != data.info["counts"]:  # cannot happen unless a source changed in between
        raise ConfigError(f"low-res cache {low.folder} does not pair with {data.folder}")
    return data, low


def grid_rows(data: TokenData, n: int) -> tuple[list[int], list[str]]:
    """n val rows spread over the sources and their main captions (what a super-resolution
    model's sample grids upsample)."""
    rows = [i for r in val_groups(data).values() for i in r]
    picked = [rows[round(k * (len(rows) - 1) / max(1, n - 1))] for k in range(n)]
    return picked, [data.captions.captions[int(data.val.caption_rows(i)[0])] for i in picked]


def model_config(cfg: TransformerTrainConfig, tokenizer, encoder):
    """cfg.model completed from the data it trains on: the tokenizer's codebook and grid (a
    diffusion model: its codebook vectors) and the text encoder's widths."""
    resolution = cfg.model.resolution
    if resolution % tokenizer.downsample:
        raise ConfigError(f"model.resolution {resolution} is not a multiple of the tokenizer's "
                          f"downsampling {tokenizer.downsample}")
    if cfg.model.objective == "diffusion":  # its data: the tokens' codebook vectors
        return cfg.model.replace(grid=resolution // tokenizer.downsample,
                                 channels=tokenizer.config.vq_embed_dim, tokenizer=cfg.tokenizer,
                                 text_dim=encoder.hidden_dim, pooled_dim=encoder.pooled_dim,
                                 text_encoder=cfg.text_encoder)
    try:
        return cfg.model.for_data(tokenizer.codebook_size, resolution // tokenizer.downsample,
                                  encoder.hidden_dim, encoder.pooled_dim, cfg.text_encoder, cfg.tokenizer)
    except ConfigError as e:
        raise ConfigError(f"model ({cfg.model.kind}) with tokenizer {cfg.tokenizer!r} and text "
                          f"encoder {cfg.text_encoder!r}: {e}") from None


def make_optimizer(model: torch.nn.Module, cfg: TransformerTrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norms or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "emb" not in name else no_decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.99))


def evaluate(run: Run, ema: Transformer, tokenizer, encoder, data: TokenData, low: TokenData | None,
             done: int) -> None:
    """Held-out loss (and accuracy), a sample grid and, if asked, the shapes-suite point."""
    cfg = run.cfg
    groups = val_groups(data)
    if cfg.model.objective == "diffusion":
        run.log({"step": done, **evaluate_diffusion(ema, tokenizer, data.val, data.captions, groups)})
    else:
        run.log({"step": done, **evaluate_masked(ema, data.val, data.captions, groups,
                                                 low=low.val if low else None)})
    prompts, low_res = cfg.sample_prompts, None
    if low is not None:  # upsample val images' low-res tokens, with their captions
        rows, captions = grid_rows(data, len(prompts))
        prompts, low_res = tuple(captions), low.val.tokens[rows]
    grid = sample_grid(ema, tokenizer, encoder, prompts, cfg.sampler(), low_res=low_res)
    grid.save(run.out / "samples" / f"step-{done:06d}.png")
    if cfg.eval_shapes and low is None:
        run.log({"step": done, **shapes_curve_point(ema, tokenizer, encoder, cfg)})


def train_transformer(cfg: TransformerTrainConfig, out: str | Path, resume: bool = False,
                      stop_at: int | None = None) -> Path:
    """Train into run folder `out` (metrics.jsonl, samples/, checkpoints/, transformer/);
    `resume` continues from the newest checkpoint, `stop_at` ends early."""
    from ..text.encoders import load_text_encoder
    from ..tokenizer import VQTokenizer

    acc = make_accelerator(cfg.mixed_precision, cfg.grad_accum)
    run = Run(out, cfg, resume, stop_at, acc)
    # Setup on the CPU, named (what a GPU run needs too: Accelerate moves the model; the rest
    # moves below); the steps then create nothing without naming a device (tests/test_device.py).
    with torch.device("cpu"):
        tokenizer = VQTokenizer.from_pretrained(cfg.tokenizer)
        rule = getattr(cfg.model, "caption_rule", "")
        encoder = load_text_encoder(cfg.text_encoder).with_caption_rule(rule)
        mcfg = model_config(cfg, tokenizer, encoder)
        cfg = cfg.replace(model=mcfg)
        with acc.main_process_first():  # one process builds the cache, the others load it
            data, low = training_data(cfg, tokenizer, encoder)
        diffusion = mcfg.objective == "diffusion"
        if diffusion:  # deterministic: a resumed run computes the same scale
            mcfg = mcfg.replace(latent_scale=latent_scale(tokenizer, data.train.tokens, mcfg.sigma_d))
            cfg = cfg.replace(model=mcfg)
        order = torch.cat([torch.arange(r.start, r.stop).repeat(k) for r, k in
                           zip(source_ranges(data.info["counts"]["train"]), cfg.repeats, strict=True)])
        empty_row = int(data.captions.rows([""])[0])

        torch.manual_seed(cfg.seed)
        model = TRANSFORMERS[mcfg.kind](mcfg).train()
        if cfg.init_from and run.ckpt is None:
            acc.print(warm_start(model, cfg.init_from))
        ema = copy.deepcopy(model).eval().requires_grad_(False)
        opt = make_optimizer(model, cfg)
        run.open({"model": model, "ema": ema}, {"model": opt}, cfg=cfg)
    model, opt = acc.prepare(model, opt)
    raw = acc.unwrap_model(model)
    ema, tokenizer, encoder = (m.to(acc.device) for m in (ema, tokenizer, encoder))
    sampler = StepBatchSampler(len(order), cfg.batch_size, cfg.seed, 0, acc.process_index, acc.num_processes)
    bar = run.steps("transformer")
    for step in bar:
        lr = run.set_lr(step, {opt: cfg.lr})
        logs: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            at = step * cfg.grad_accum + micro
            idx = [int(order[i]) for i in sampler.batch_at(at)]
            gen = step_generator(cfg.seed, at, acc.process_index)
            rows = pick_captions(data.train, idx, cfg, empty_row, gen)
            text = data.captions.lookup(rows).to(acc.device)
            with acc.accumulate(model):
                with acc.autocast():
                    batch = data.train.tokens[idx].to(acc.device)
                    if diffusion:
                        batch = token_latents(tokenizer, batch, mcfg.latent_scale)
                    cond = {} if diffusion else {k: v.to(acc.device) for k, v in batch_conditions(
                        mcfg, data.train, low.train if low else None, idx, gen, cfg.micro_dropout).items()}
                    loss, metrics = training_loss(model, mcfg, batch, text, gen, cfg.label_smoothing,
                                                  acc.device, cfg.loss_weighting, **cond)
                acc.backward(loss)
                if acc.sync_gradients:
                    logs["grad_norm"] = acc.clip_grad_norm_(model.parameters(), cfg.grad_clip).item()
                opt.step()
                opt.zero_grad(set_to_none=True)
            logs.update(metrics)
        done = step + 1
        update_ema(ema, raw, cfg.ema_decay, done)
        if run.due(done, cfg.log_every):
            run.log({**logs, "step": done, "lr": lr})
            bar.set_postfix({k: f"{logs[k]:.3f}" for k in ("loss", "acc") if k in logs})
        if run.main and run.due(done, cfg.eval_every):
            evaluate(run, ema, tokenizer, encoder, data, low, done)
        run.checkpoint(done)
    if run.finish(raw):
        ema.save_pretrained(run.out / "transformer")
    acc.wait_for_everyone()
    return run.out / "transformer"
