"""What every training run shares, whatever it trains: the fixed sample prompts, per-step
random streams that make resume exact, the EMA update and the DDP weights checksum."""

from __future__ import annotations

import hashlib

import torch

SAMPLE_PROMPTS = ("red heart", "smiling face with sunglasses", "pizza", "a blue circle",
                  "two yellow stars", "a red square left of a green triangle", "rocket", "cat face")


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
