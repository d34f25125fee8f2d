"""MaskGIT parallel decoding (Chang et al. 2022; Muse), as a pure function.

Start from a token grid where unknown positions hold MASK. At step i of N: predict every
masked token (classifier-free guided), sample a candidate for each, score the candidates
by their probability plus annealed Gumbel noise, keep the most confident ones and re-mask
the rest so that the masked fraction follows `schedule((i + 1) / N)`; the last step keeps
all. Tokens known at the start (editing) are never changed. Randomness comes only from
`generator`, so the same seed gives the same tokens on CPU.

`order` picks which masked positions are kept at each step: "confidence" (MaskGIT: the most
probable candidates, with annealed Gumbel noise) or "halton" (Besnier et al. 2025, Halton-
MaskGIT: positions are revealed in the order of a 2-D Halton sequence over the grid, a
low-discrepancy order that spreads each step's tokens evenly over the image instead of
clustering them where the model is already sure; the order is cyclically shifted by a random
offset per image, and the tokens are plain samples at `temperature`).

`refine` rounds run after the last step (a corrector: Muse's mask-free editing with the same
prompt): every generated token is scored by how likely the model finds it given all the others
(`scored_logprob`, REFINE_PASSES forwards), the least likely `refine_fraction` of them are masked
again and re-sampled in REFINE_STEPS unguided steps. MaskGIT commits each token once; tokens
committed early, against little context and with strong Gumbel noise on the confidences, can
disagree with the finished image (a bent point of a thin shape), and this is where the model
gets to redraw them (docs/masked-vs-ar.md part 18).

Guidance follows l = l_cond + g * (l_cond - l_uncond): g = 0 is plain conditional sampling
(and skips the unconditional half of the batch). `guidance_interval` (lo, hi) guides only the
steps i with lo <= i / steps < hi; the others run the conditional half alone, which halves
their cost (the inference-speed lever of Kynkaenniemi et al. 2024's limited-interval guidance).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..config import check_interval
from ..errors import ConfigError
from ..models.transformer import MaskedTransformer, TextContext
from .control import check_cancelled
from .noise import Generators, gumbel, random

MASK_SCHEDULES: dict[str, Callable[[float], float]] = {
    # fraction of the initially masked tokens still masked at progress t in [0, 1]
    "cosine": lambda t: math.cos(math.pi / 2 * t),
    "linear": lambda t: 1.0 - t,
    "square": lambda t: 1.0 - t * t,
    "sqrt": lambda t: 1.0 - math.sqrt(t),
}
ORDERS = ("confidence", "halton")
REFINE_PASSES, REFINE_STEPS = 2, 2  # per refinement round: scoring forwards, re-sampling steps
GUIDANCE_SCHEDULES: dict[str, Callable[[float], float]] = {
    # multiplier of the guidance scale at progress t (t of the step being taken)
    "constant": lambda t: 1.0,
    "linear": lambda t: t,
    "cosine": lambda t: 0.5 * (1.0 - math.cos(math.pi * t)),
}


def check_sampler_args(steps: int, guidance: float, schedule: str, guidance_schedule: str,
                       temperature: float, noise: float, guidance_interval: tuple[float, float] = (0.0, 1.0),
                       order: str = "confidence", refine: int = 0, refine_fraction: float = 0.05) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps is {steps!r}; accepted: an integer >= 1")
    if guidance < 0:
        raise ConfigError(f"guidance is {guidance}; accepted: >= 0 (0 = no classifier-free guidance)")
    if schedule not in MASK_SCHEDULES:
        raise ConfigError(f"schedule is {schedule!r}; accepted: {', '.join(MASK_SCHEDULES)}")
    if guidance_schedule not in GUIDANCE_SCHEDULES:
        raise ConfigError(f"guidance_schedule is {guidance_schedule!r}; accepted: "
                          f"{', '.join(GUIDANCE_SCHEDULES)}")
    if temperature <= 0:
        raise ConfigError(f"temperature is {temperature}; accepted: > 0")
    if noise < 0:
        raise ConfigError(f"noise is {noise}; accepted: >= 0")
    if order not in ORDERS:
        raise ConfigError(f"order is {order!r}; accepted: {', '.join(ORDERS)}")
    check_guidance_interval(guidance_interval)
    if not isinstance(refine, int) or refine < 0:
        raise ConfigError(f"refine is {refine!r}; accepted: an integer >= 0 (rounds of re-masking)")
    if not 0 < refine_fraction <= 1:
        raise ConfigError(f"refine_fraction is {refine_fraction}; accepted: 0 < refine_fraction <= 1")


def check_guidance_interval(interval: tuple[float, float], name: str = "guidance_interval") -> None:
    check_interval(name, interval, "the fraction of the steps that are guided")


def radical_inverse(i: int, base: int) -> float:
    """The i-th element of the van der Corput sequence in `base` (i's digits mirrored
    about the radix point)."""
    out, f = 0.0, 1.0 / base
    while i:
        i, digit = divmod(i, base)
        out += digit * f
        f /= base
    return out


def halton_rank(h: int, w: int) -> torch.Tensor:
    """[h, w]: the step of the 2-D Halton sequence (bases 2 and 3) at which each grid cell is
    first hit, as ranks 0 .. h*w - 1. Cells the sequence has not hit after many points (it
    covers a grid unevenly at first) follow in raster order."""
    rank = torch.full((h * w,), -1, dtype=torch.long, device="cpu")
    seen = 0
    for i in range(1, 64 * h * w):
        cell = int(radical_inverse(i, 2) * h) * w + int(radical_inverse(i, 3) * w)
        if rank[cell] < 0:
            rank[cell] = seen
            seen += 1
            if seen == h * w:
                break
    rest = rank < 0
    rank[rest] = seen + torch.arange(int(rest.sum()), device="cpu")
    return rank.view(h, w)


def halton_priority(shape: torch.Size, generator: Generators, device: torch.device) -> torch.Tensor:
    """[B, h*w] priorities (higher = revealed earlier): the Halton order, rolled by a random
    (dy, dx) per image so that images do not all start from the same cells."""
    b, h, w = shape
    rank = halton_rank(h, w).to(device)
    shift = (random((b, 2), generator, device) * torch.tensor([h, w], device=device)).long()
    rows = [torch.roll(rank, (int(dy), int(dx)), (0, 1)) for dy, dx in shift.tolist()]
    return -torch.stack(rows).view(b, -1).float()


def guided_steps(steps: int, interval: tuple[float, float]) -> int:
    """How many of `steps` steps `guidance_interval` guides."""
    return sum(interval[0] <= i / steps < interval[1] for i in range(steps))


def guidance_context(cond: TextContext, uncond: TextContext | None, guidance: float) -> TextContext:
    """The context guided_logits takes: cond, with uncond stacked after it when guidance > 0."""
    if guidance > 0 and uncond is None:
        raise ConfigError("guidance > 0 needs an unconditional text context")
    return TextContext.cat([cond, uncond]) if guidance > 0 else cond


def guided_logits(model: MaskedTransformer, tokens: torch.Tensor, ctx: TextContext,
                  guidance: float | torch.Tensor | None) -> torch.Tensor:
    """Logits [B, H*W, K] (fp32) of tokens [B, H, W]: l_c + g (l_c - l_u) with cond and uncond
    in one batched forward (ctx from guidance_context), or plain l_c when guidance is None;
    g may be a tensor [B, 1, 1] of per-row weights."""
    logits = model(torch.cat([tokens, tokens]) if guidance is not None else tokens, ctx)
    return combine_guidance(logits.float().view(len(ctx.c), tokens[0].numel(), -1), guidance)


def combine_guidance(logits: torch.Tensor, guidance: float | torch.Tensor | None) -> torch.Tensor:
    """Classifier-free guidance on logits [2B, ...] = cond rows then uncond rows:
    l_c + g (l_c - l_u); logits [B, ...] pass through when guidance is None."""
    if guidance is None:
        return logits
    lc, lu = logits.chunk(2)
    return lc + guidance * (lc - lu)


@torch.no_grad()
def maskgit_sample(
    model: MaskedTransformer,
    tokens: torch.Tensor,
    cond: TextContext,
    uncond: TextContext | None = None,
    *,
    steps: int = 12,
    guidance: float = 3.0,
    schedule: str = "cosine",
    guidance_schedule: str = "constant",
    temperature: float = 1.0,
    noise: float = 4.5,
    guidance_interval: tuple[float, float] = (0.0, 1.0),
    order: str = "confidence",
    refine: int = 0,
    refine_fraction: float = 0.05,
    generator: Generators = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """tokens [B, H, W] with `model.mask_id` where to generate -> completed tokens.

    cond / uncond: text contexts of B rows (`model.prepare_text`), computed once.
    temperature: softmax temperature for the candidates; noise: Gumbel scale on the
    confidences at the first step, annealed linearly to 0 (MaskGIT's choice temperature).
    guidance_interval: the fraction of the steps that are guided (see the module docstring).
    order: "confidence" or "halton" (see the module docstring; `noise` is unused by halton).
    refine / refine_fraction: rounds of re-masking the least likely generated tokens after the
    last step, and the fraction of them each round re-samples (module docstring).
    """
    check_sampler_args(steps, guidance, schedule, guidance_schedule, temperature, noise,
                       guidance_interval, order, refine, refine_fraction)
    b = tokens.shape[0]
    if cond.c.shape[0] != b or (uncond is not None and uncond.c.shape[0] != b):
        raise ConfigError(f"text contexts must have one row per image ({b})")
    guided = guidance > 0
    ctx = guidance_context(cond, uncond, guidance)
    mask_id = model.mask_id
    x = tokens.clone()
    shape = x.shape
    x = x.view(b, -1)
    n_unknown = (x == mask_id).sum(1)  # per image
    priority = halton_priority(shape, generator, x.device) if order == "halton" else None
    for i in range(steps):
        check_cancelled()
        unknown = x == mask_id
        if not unknown.any():
            break
        if guided and guidance_interval[0] <= i / steps < guidance_interval[1]:
            scale = guidance * GUIDANCE_SCHEDULES[guidance_schedule]((i + 1) / steps)
            logits = guided_logits(model, x.view(shape), ctx, scale)
        else:
            logits = guided_logits(model, x.view(shape), cond, None)
        logits = logits / temperature
        sampled = (logits + gumbel(logits.shape, generator, logits.device)).argmax(-1)
        logp = torch.log_softmax(logits, -1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        sampled = torch.where(unknown, sampled, x)
        t = (i + 1) / steps
        # how many stay masked after this step: schedule of the progress, at least 1 until the end
        keep_masked = torch.floor(n_unknown * MASK_SCHEDULES[schedule](t)).long()
        if i < steps - 1:
            keep_masked = torch.minimum(torch.maximum(keep_masked, torch.ones_like(keep_masked)),
                                        unknown.sum(1) - 1).clamp(min=0)
        else:
            keep_masked = torch.zeros_like(keep_masked)
        if priority is None:
            conf = logp + noise * (1.0 - t) * gumbel(logp.shape, generator, logp.device)
        else:
            conf = priority
        conf = torch.where(unknown, conf, torch.full_like(conf, math.inf))  # decided tokens stay
        ranks = conf.argsort(dim=1).argsort(dim=1)  # 0: the least confident
        remask = ranks < keep_masked.unsqueeze(1)
        x = torch.where(remask, torch.full_like(sampled, mask_id), sampled)
        if callback is not None:
            callback(i, x.view(shape))
    if not refine or not n_unknown.any():
        return x.view(shape)
    return refined(model, x.view(shape), tokens == mask_id, cond, refine, refine_fraction, generator,
                   schedule=schedule, temperature=temperature, noise=noise, order=order)


@torch.no_grad()
def refined(model: MaskedTransformer, x: torch.Tensor, generated: torch.Tensor, cond: TextContext,
            rounds: int, fraction: float, generator: Generators, **options) -> torch.Tensor:
    """`rounds` of re-masking the least likely `fraction` of the `generated` positions of x
    [B, H, W] and re-sampling them unguided (the module docstring); the other tokens stay."""
    b = len(x)
    k = torch.round(generated.view(b, -1).sum(1) * fraction).long().unsqueeze(1)
    for _ in range(rounds):
        group = (random(x.shape, generator, x.device) * REFINE_PASSES).long()
        score = scored_logprob(model, x, cond, None, group, REFINE_PASSES)
        score = torch.where(generated, score, torch.full_like(score, math.inf)).view(b, -1)
        remask = (score.argsort(1).argsort(1) < k).view_as(x)
        x = maskgit_sample(model, torch.where(remask, model.mask_id, x), cond, None, steps=REFINE_STEPS,
                           guidance=0.0, generator=generator, **options)
    return x


@torch.no_grad()
def token_logprob(model: MaskedTransformer, tokens: torch.Tensor, ctx: TextContext, guidance: float | None,
                  generator: torch.Generator | None = None, passes: int = 4) -> torch.Tensor:
    """How likely each token of a full grid [B, H, W] is given the rest and the text: the
    positions are split at random into `passes` groups, each group is masked in turn and
    scored with log p(token) under the (guided) logits. Mask-free editing re-masks the
    lowest-scoring tokens: the ones the new prompt disagrees with."""
    group = torch.randint(passes, tokens.shape, generator=generator, device="cpu").to(tokens.device)
    return scored_logprob(model, tokens, ctx, guidance, group, passes)


def scored_logprob(model: MaskedTransformer, tokens: torch.Tensor, ctx: TextContext, guidance: float | None,
                   group: torch.Tensor, passes: int) -> torch.Tensor:
    """token_logprob with the positions' groups [B, H, W] (values 0 .. passes - 1) given."""
    score = torch.zeros(tokens.shape, device=tokens.device)
    for p in range(passes):
        hide = group == p
        logits = guided_logits(model, torch.where(hide, model.mask_id, tokens), ctx, guidance)
        logp = torch.log_softmax(logits, -1).gather(-1, tokens.reshape(tokens.shape[0], -1, 1))
        score = torch.where(hide, logp.view(tokens.shape), score)
    return score
