"""One-step sampling of a Di[M]O student (distill/dimo.py), as a pure function.

The student maps an initial token state to every token in one forward pass. The initial
state is where the randomness lives (a one-step model has no later steps to add any):
unknown positions get uniformly random codes, `init_mask_ratio` of them are then set back to
MASK, and the input token embeddings get Gaussian noise of `embed_noise` times the embedding
table's RMS, mixed variance-preserving (sqrt(1 - s^2) e + s z). Then one (optionally guided)
forward pass, and each unknown token is drawn from softmax(logits / temperature). Known
tokens (editing) are kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ConfigError
from ..models.transformer import TextContext
from .maskgit import guidance_context, guided_logits
from .noise import Generators, gumbel, random


def check_one_step_args(guidance: float, temperature: float, init_mask_ratio: float,
                        embed_noise: float) -> None:
    if guidance < 0:
        raise ConfigError(f"guidance is {guidance}; accepted: >= 0 (0 = no classifier-free guidance)")
    if temperature <= 0:
        raise ConfigError(f"temperature is {temperature}; accepted: > 0")
    if not 0 <= init_mask_ratio <= 1:
        raise ConfigError(f"init_mask_ratio is {init_mask_ratio}; accepted: 0..1")
    if not 0 <= embed_noise < 1:
        raise ConfigError(f"embed_noise is {embed_noise}; accepted: 0 <= embed_noise < 1")


def token_embedding(model: nn.Module) -> nn.Embedding:
    """The embedding of the image tokens: the one whose vocabulary includes MASK
    (ours, aMUSEd's U-ViT and Meissonic's MMDiT each have exactly one)."""
    found = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings > model.mask_id]
    if len(found) != 1:
        raise ConfigError(f"{type(model).__name__}: expected one token embedding with MASK "
                          f"(id {model.mask_id}), found {len(found)}")
    return found[0]


@contextmanager
def embedding_noise(model: nn.Module, scale: float, rows: int, generator: Generators) -> Iterator[None]:
    """Within the block, the model's token embeddings get variance-preserving Gaussian noise:
    sqrt(1 - s^2) e + s * rms(table) * z. A forward hook, so every architecture gets it. The
    noise is drawn for `rows` images and tiled over a batch of k * rows (the conditional and
    unconditional halves of classifier-free guidance see the same noise)."""
    if scale == 0:
        yield
        return
    emb = token_embedding(model)

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor:
        rms = module.weight.detach().float().pow(2).mean().sqrt()
        z = random((rows, *out.shape[1:]), generator, out.device, normal=True).to(out.dtype)
        z = z.repeat(out.shape[0] // rows, *([1] * (out.dim() - 1)))
        return math.sqrt(1 - scale**2) * out + scale * rms * z

    handle = emb.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def initial_state(tokens: torch.Tensor, codebook_size: int, mask_id: int, init_mask_ratio: float,
                  generator: Generators) -> torch.Tensor:
    """tokens [B, ...] with MASK where unknown -> random codes there, round(ratio * unknown)
    of which (chosen at random) are MASK again."""
    b, flat = tokens.shape[0], tokens.reshape(tokens.shape[0], -1)
    unknown = flat == mask_id
    codes = (random(flat.shape, generator) * codebook_size).long().clamp(max=codebook_size - 1)
    order = torch.where(unknown, random(flat.shape, generator), 2.0).argsort(1).argsort(1)
    n_mask = (unknown.sum(1, keepdim=True) * init_mask_ratio).round().long()
    state = torch.where(unknown, torch.where(order < n_mask, mask_id, codes), flat)
    return state.view(b, *tokens.shape[1:])


@torch.no_grad()
def one_step_sample(
    model: nn.Module,
    tokens: torch.Tensor,
    cond: TextContext,
    uncond: TextContext | None = None,
    *,
    guidance: float = 0.0,
    temperature: float = 1.0,
    init_mask_ratio: float = 0.6,
    embed_noise: float = 0.1,
    generator: Generators = None,
) -> torch.Tensor:
    """tokens [B, H, W] with `model.mask_id` where to generate -> completed tokens, one
    forward pass (two rows per image with guidance > 0)."""
    check_one_step_args(guidance, temperature, init_mask_ratio, embed_noise)
    b = tokens.shape[0]
    if cond.c.shape[0] != b or (uncond is not None and uncond.c.shape[0] != b):
        raise ConfigError(f"text contexts must have one row per image ({b})")
    unknown = (tokens == model.mask_id).view(b, -1)
    state = initial_state(tokens, model.config.codebook_size, model.mask_id, init_mask_ratio, generator)
    ctx = guidance_context(cond, uncond, guidance)
    with embedding_noise(model, embed_noise, b, generator):
        logits = guided_logits(model, state, ctx, guidance if guidance > 0 else None) / temperature
    sampled = (logits + gumbel(logits.shape, generator, logits.device)).argmax(-1)
    return torch.where(unknown, sampled, tokens.view(b, -1)).view_as(tokens)
