"""Di[M]O (Zhu et al. 2025): distil a masked model into a one-step generator.

The student (a copy of the teacher) maps a random initial token state (sampling/one_step.py)
to logits for every token in one pass; its tokens are drawn from them. Token-level
distribution matching, the discrete analogue of DMD:

  1. re-mask a random subset of the student's tokens with the teacher's training schedule;
  2. at the re-masked positions compare the frozen teacher's (guided) token distribution
     p_T with that of an auxiliary model p_A, trained online with cross-entropy on the
     student's own samples (so p_A tracks what the student generates);
  3. move the student's logits at those positions by the gradient of a divergence between
     the two: forward KL gives (p_A - p_T), reverse KL p_A (log p_A - log p_T - KL); `beta`
     mixes them (the reference's "Jeffreys" family, 0 = forward KL, its default). The
     surrogate 0.5 |l - sg(l - grad)|^2 has exactly that gradient w.r.t. the logits l.

The auxiliary model is updated `aux_updates` times per student update (two time scales).
Its cross-entropy has no label smoothing by default (the reference uses 0.1): smoothing e makes
p_A = (1 - e) q + e / K for the student's q, so the fixed point p_A = p_T is a sharpened
student, q = (p_T - e / K) / (1 - e); on the toy Markov chain of the tests it left marginal
errors of ~0.05 where no smoothing reaches ~0.01.
The functions here take models and closures, so the same code trains the image student
(`distill_dimo`, below) and the toy Markov-chain student of the tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..sampling.noise import gumbel
from ..sampling.one_step import embedding_noise, initial_state

# logits_of(model, tokens [B, ...]) -> logits [B, N, K] in fp32, the batch's text bound in
LogitsOf = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Remask = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DiMOSettings:
    """What one update needs to know (a subset of the training config)."""
    codebook_size: int
    mask_id: int
    init_mask_ratio: float = 0.6
    embed_noise: float = 0.1
    beta: float = 0.0            # 0: forward KL (the reference default), 1: reverse KL
    label_smoothing: float = 0.0  # of the auxiliary model's cross-entropy (see below)


def student_forward(student: nn.Module, logits_of: LogitsOf, blank: torch.Tensor, s: DiMOSettings,
                    gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits [B, N, K], sampled tokens shaped like blank) from a fresh random initial state."""
    state = initial_state(blank, s.codebook_size, s.mask_id, s.init_mask_ratio, gen)
    with embedding_noise(student, s.embed_noise, len(blank), gen):
        logits = logits_of(student, state)
    tokens = (logits.detach() + gumbel(logits.shape, gen, logits.device)).argmax(-1)
    return logits, tokens.view_as(blank)


def divergence_grad(teacher_logits: torch.Tensor, aux_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """d D(p_T, p_A) / d logits as applied to the student: (1 - beta) (p_A - p_T)
    + beta p_A (log p_A - log p_T - KL(p_A || p_T))."""
    lt, la = teacher_logits.float().log_softmax(-1), aux_logits.float().log_softmax(-1)
    pa = la.exp()
    grad = pa - lt.exp()
    if beta > 0:
        diff = la - lt
        rkl = (pa * diff).sum(-1, keepdim=True)
        grad = (1 - beta) * grad + beta * pa * (diff - rkl)
    return grad


def generator_loss(student: nn.Module, aux: nn.Module, teacher: Callable[[torch.Tensor], torch.Tensor],
                   logits_of: LogitsOf, remask: Remask, blank: torch.Tensor, s: DiMOSettings,
                   gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The student's surrogate loss (backward it) and what to log."""
    logits, tokens = student_forward(student, logits_of, blank, s, gen)
    masked, where = remask(tokens, gen)
    with torch.no_grad():
        pt = teacher(masked)
        pa = logits_of(aux, masked)
        grad = divergence_grad(pt, pa, s.beta)
    where = where.reshape(len(blank), -1)
    grad = torch.where(where.unsqueeze(-1), torch.nan_to_num(grad), 0.0)
    loss = 0.5 * F.mse_loss(logits, (logits - grad).detach(), reduction="sum") / len(blank)
    with torch.no_grad():
        tv = 0.5 * (pa.softmax(-1) - pt.softmax(-1)).abs().sum(-1)[where].mean()
        entropy = torch.distributions.Categorical(logits=logits.detach().float()).entropy().mean()
    return loss, {"loss_student": loss.item(), "tv_aux_teacher": tv.item(), "student_entropy": entropy.item()}


def aux_loss(student: nn.Module, aux: nn.Module, logits_of: LogitsOf, remask: Remask, blank: torch.Tensor,
             s: DiMOSettings, gen: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of the auxiliary model on fresh student samples, at re-masked positions."""
    with torch.no_grad():
        _, tokens = student_forward(student, logits_of, blank, s, gen)
    masked, where = remask(tokens, gen)
    where = where.reshape(len(blank), -1)
    logits = logits_of(aux, masked)[where]
    target = tokens.reshape(len(blank), -1)[where]
    loss = F.cross_entropy(logits, target, label_smoothing=s.label_smoothing)
    return loss, {"loss_aux": loss.item(), "acc_aux": (logits.argmax(-1) == target).float().mean().item()}
