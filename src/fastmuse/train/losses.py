"""The per-batch losses of the token-grid families: masked cross-entropy under cosine-ratio
random masks (Muse / MaskGIT), next-token cross-entropy (the autoregressive baseline, whose
forward shifts the sequence) and the DiT's TrigFlow flow loss on the tokens' latents."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..models.dit import DiTConfig
from ..models.transformer import MaskedTransformerConfig
from ..sampling.noise import random
from ..sampling.trigflow import flow_loss, sample_time


def random_mask(tokens: torch.Tensor, mask_id: int, gen: torch.Generator,
                ratios: tuple[float, float] = (0.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask cos(pi/2 * r), r ~ U(0,1), of each grid's tokens (at least one); `ratios` = (lo, hi)
    truncates that cosine schedule to mask ratios in [lo, hi].
    Returns (masked tokens, bool mask of the positions to predict)."""
    b = tokens.shape[0]
    flat = tokens.reshape(b, -1)
    n = flat.shape[1]
    r_lo, r_hi = (2 / math.pi * math.acos(x) for x in reversed(ratios))
    ratio = torch.cos(math.pi / 2 * (r_lo + (r_hi - r_lo) * random((b,), gen, tokens.device)))
    count = (ratio * n).ceil().clamp(1, n).long()
    ranks = random((b, n), gen, tokens.device).argsort(1).argsort(1)
    mask = ranks < count.unsqueeze(1)
    return torch.where(mask, mask_id, flat).view_as(tokens), mask.view_as(tokens)


def masked_loss(model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, inputs: torch.Tensor,
                text, label_smoothing: float = 0.0, weighting: str = "token",
                **cond) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy and accuracy on the masked positions only (`cond`: micro / low_res;
    `weighting`: see TransformerTrainConfig.loss_weighting)."""
    logits = model(inputs, text, **cond)[mask].float()
    target = tokens[mask]
    ce = F.cross_entropy(logits, target, label_smoothing=label_smoothing, reduction="none")
    if weighting == "image":  # each grid's masked tokens share one unit of weight
        per_grid = mask.flatten(1).sum(1)
        ce = ce / per_grid.repeat_interleave(per_grid).to(ce.dtype) * (len(ce) / len(per_grid))
    return ce.mean(), (logits.argmax(-1) == target).float().mean()


def loss_inputs(tokens: torch.Tensor, mcfg: MaskedTransformerConfig,
                gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the model reads, where the loss is taken). Masked model: a random cosine-schedule
    mask. Autoregressive model: the tokens themselves (its forward shifts them), every position."""
    if mcfg.objective == "autoregressive":
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    return random_mask(tokens, mcfg.mask_id, gen)


def diffusion_loss(model: torch.nn.Module, dcfg: DiTConfig, x0: torch.Tensor, text,
                   gen: torch.Generator, times: tuple[float, float] | None = None) -> torch.Tensor:
    """The DiT's flow loss on data x0 at log-normal times (the config's, or `times` = (mean,
    std)). Calls the module itself (not .velocity) so a DDP wrapper sees the forward."""
    sigma_d = dcfg.sigma_d
    mean, std = times or (dcfg.time_mean, dcfg.time_std)
    t = sample_time(len(x0), mean, std, sigma_d=sigma_d, generator=gen).to(x0.device)
    z = sigma_d * random(x0.shape, gen, x0.device, normal=True)
    return flow_loss(lambda x, tt: sigma_d * model(x / sigma_d, tt, text).float(), x0, t, z)


def training_loss(model: torch.nn.Module, mcfg, x: torch.Tensor, text, gen: torch.Generator,
                  label_smoothing: float, device, weighting: str = "token",
                  **cond) -> tuple[torch.Tensor, dict[str, float]]:
    """One batch's loss and what to log with it, for whichever family `mcfg` describes
    (x: token ids, or for a DiT their latents; `cond`: micro / low_res of a masked model)."""
    if mcfg.objective == "diffusion":
        loss = diffusion_loss(model, mcfg, x.to(device), text, gen)
        return loss, {"loss": loss.item()}
    inputs, mask = loss_inputs(x, mcfg, gen)
    loss, accuracy = masked_loss(model, x.to(device), mask.to(device), inputs.to(device), text,
                                 label_smoothing, weighting, **cond)
    return loss, {"loss": loss.item(), "acc": accuracy.item()}
