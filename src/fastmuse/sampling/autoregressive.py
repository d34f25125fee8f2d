"""Raster-order autoregressive sampling for the AR baseline, as a pure function.

One network evaluation per token (g*g of them, each on a single position thanks to the
KV cache; cond and uncond rows share one batched call when guided). Logits are guided
like MaskGIT's (sampling/maskgit.combine_guidance), divided by `temperature`, cut to the
`top_k` most likely codes (0 = all), and sampled with Gumbel-max from `generator` only.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from ..models.autoregressive import ARTransformer
from ..models.transformer import KVCache, TextContext
from .control import check_cancelled
from .maskgit import combine_guidance, guidance_context
from .noise import Generators, gumbel


def check_ar_args(guidance: float, temperature: float, top_k: int) -> None:
    if guidance < 0:
        raise ConfigError(f"guidance is {guidance}; accepted: >= 0 (0 = no classifier-free guidance)")
    if temperature <= 0:
        raise ConfigError(f"temperature is {temperature}; accepted: > 0")
    if not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"top_k is {top_k!r}; accepted: an integer >= 0 (0 = no cut)")


@torch.no_grad()
def ar_sample(model: ARTransformer, tokens: torch.Tensor, cond: TextContext,
              uncond: TextContext | None = None, *, guidance: float = 3.0, temperature: float = 1.0,
              top_k: int = 0, generator: Generators = None) -> torch.Tensor:
    """tokens [B, g, g] with `model.mask_id` where to generate -> completed tokens, in raster
    order (maskgit_sample's shape). Known tokens are kept and read as the model goes; it cannot
    look ahead of them, so only a known prefix conditions what follows."""
    check_ar_args(guidance, temperature, top_k)
    b, g = cond.c.shape[0], model.config.grid
    if tuple(tokens.shape) != (b, g, g):
        raise ConfigError(f"tokens are {tuple(tokens.shape)}; the model takes ({b}, {g}, {g}): one "
                          "grid per text row")
    ctx = guidance_context(cond, uncond, guidance)
    rows = len(ctx.c)
    caches = [KVCache() for _ in model.blocks]
    device = ctx.c.device
    known = tokens.reshape(b, g * g).to(device)
    prev = torch.full((rows,), model.bos_id, dtype=torch.long, device=device)
    out = torch.empty(b, g * g, dtype=torch.long, device=device)
    for i in range(g * g):
        check_cancelled()
        logits = model.step(prev, i, ctx, caches).float()
        logits = combine_guidance(logits, guidance if guidance > 0 else None) / temperature
        if 0 < top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, -torch.inf)
        sampled = (logits + gumbel(logits.shape, generator, logits.device)).argmax(-1)
        out[:, i] = torch.where(known[:, i] == model.mask_id, sampled, known[:, i])
        prev = out[:, i].repeat(rows // b)
    return out.view(b, g, g)
