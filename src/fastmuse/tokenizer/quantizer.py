"""Vector quantizer: nearest codebook entry, straight-through gradients.

Two ways to learn the codebook:
- "st": codebook loss ||sg(z) - e||^2 + beta * ||z - sg(e)||^2 (VQ-VAE); the layout and
  numerics match diffusers' VectorQuantizer, so its weights load as they are.
- "ema": the codebook is an exponential moving average of the encoder outputs assigned
  to each code (k-means online); only the commitment term reaches the encoder.
Optional l2-normalised codes (cosine similarity lookup, ViT-VQGAN) and dead-code restarts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class VectorQuantizer(nn.Module):
    def __init__(self, num_codes: int, dim: int, mode: str = "st", beta: float = 0.25,
                 decay: float = 0.99, l2_normalize: bool = False) -> None:
        super().__init__()
        self.num_codes, self.dim, self.mode = num_codes, dim, mode
        self.beta, self.decay, self.l2_normalize = beta, decay, l2_normalize
        self.embedding = nn.Embedding(num_codes, dim)  # name kept from diffusers
        nn.init.uniform_(self.embedding.weight, -1.0 / num_codes, 1.0 / num_codes)
        if mode == "ema":
            self.embedding.weight.requires_grad_(False)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", self.embedding.weight.detach().clone())
        # codes used since the last `take_usage()`: for logging and dead-code restarts
        self.register_buffer("usage", torch.zeros(num_codes), persistent=False)

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_normalize else w

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, D, h, w] -> nearest code ids [B, h, w]."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        if self.l2_normalize:
            flat = F.normalize(flat, dim=-1)
        # cdist as in diffusers, so that near-ties resolve the same way
        return torch.cdist(flat, self.codebook()).argmin(dim=1).view(b, h, w)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, h, w] -> codes [B, D, h, w] (contiguous, as convs expect)."""
        if ids.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"token ids must be an integer tensor, got {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.num_codes):
            raise ValueError(f"token ids must lie in [0, {self.num_codes - 1}]; got "
                             f"min {int(ids.min())}, max {int(ids.max())}")
        return F.embedding(ids, self.codebook()).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (quantised z with straight-through gradient, loss, ids [B, h, w])."""
        with torch.autocast(z.device.type, enabled=False):  # nearest codes in fp32 under bf16
            return self._quantize(z.float())

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = self.indices(z)
        if self.l2_normalize:
            z = F.normalize(z, dim=1)
        zq = self.lookup(ids)
        if self.training:
            self.usage += torch.bincount(ids.flatten(), minlength=self.num_codes).float()
            if self.mode == "ema":
                self._ema_update(z, ids)
                zq = self.lookup(ids)
        commit = F.mse_loss(z, zq.detach())
        loss = self.beta * commit if self.mode == "ema" else F.mse_loss(zq, z.detach()) + self.beta * commit
        zq = z + (zq - z).detach()
        return zq, loss, ids

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        onehot = F.one_hot(ids.flatten(), self.num_codes).type_as(flat)
        count, total = onehot.sum(0), onehot.t() @ flat
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(count)
            torch.distributed.all_reduce(total)
        self.ema_count.mul_(self.decay).add_(count, alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(total, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + 1e-5) / (n + self.num_codes * 1e-5) * n  # Laplace
        self.embedding.weight.copy_(self.ema_sum / smoothed.unsqueeze(1))

    def take_usage(self) -> torch.Tensor:
        """Counts per code since the last call (summed over DDP ranks), then reset."""
        usage = self.usage.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(usage)
        self.usage.zero_()
        return usage

    @torch.no_grad()
    def restart_dead(self, z: torch.Tensor, usage: torch.Tensor, generator: torch.Generator) -> int:
        """Move codes unused in `usage` onto random encoder outputs of this batch (rank 0's
        choice is broadcast so that every rank keeps the same codebook). Returns how many."""
        dead = (usage == 0).nonzero().flatten()
        if dead.numel() == 0:
            return 0
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.dim).float()
        if self.l2_normalize:
            flat = F.normalize(flat, dim=-1)
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=generator, device="cpu")
        new = flat[pick.to(flat.device)]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(new, src=0)
        self.embedding.weight[dead] = new.to(self.embedding.weight.dtype)
        if self.mode == "ema":
            self.ema_sum[dead] = new
            self.ema_count[dead] = 1.0
        return int(dead.numel())
