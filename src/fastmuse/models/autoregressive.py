"""The autoregressive baseline: the masked transformer's blocks with causal self-attention,
predicting the token grid one token at a time in raster order (VQGAN / Parti style).

    position i reads [BOS, t_0 .. t_{i-1}] (+ position embedding of i) -> logits of t_i

Same text conditioning, sizes, data and trainer as the masked model, so the evaluation
suite compares parallel decoding (steps << tokens) with one network evaluation per token.
Sampling (sampling/autoregressive.py) keeps each block's keys/values in a KVCache, so a
step costs one position, not the whole prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError
from ..text.encoders import TextEmbedding
from .transformer import KVCache, MaskedTransformer, MaskedTransformerConfig, TextContext


@dataclass
class ARTransformerConfig(MaskedTransformerConfig):
    """As the masked model's; id `codebook_size` is BOS instead of MASK."""

    kind = "ar_transformer"
    objective = "autoregressive"

    def validate(self) -> None:
        super().validate()
        if self.micro_conds or self.low_res_grid:
            raise ConfigError("the autoregressive baseline takes text only: 'micro_conds' must be [] and "
                              "'low_res_grid' 0")
        if self.local:
            raise ConfigError("'local' mixing reads all 8 neighbours, later ones too; the autoregressive "
                              "model accepts false only")


class ARTransformer(MaskedTransformer):
    config_class = ARTransformerConfig
    causal = True

    @property
    def bos_id(self) -> int:
        return self.config.codebook_size

    def forward(self, tokens: torch.Tensor, text: TextContext | TextEmbedding) -> torch.Tensor:
        """Teacher forcing: tokens [B, g, g] -> logits [B, g, g, K], position i seeing tokens < i."""
        ctx = self.prepare_text(text) if isinstance(text, TextEmbedding) else text
        b, h, w = tokens.shape
        g = self.config.grid
        if (h, w) != (g, g):
            raise ConfigError(f"token grid {h}x{w}; the autoregressive model reads its full {g}x{g} grid")
        seq = tokens.reshape(b, h * w)
        ids = torch.cat([seq.new_full((b, 1), self.bos_id), seq[:, :-1]], 1)
        return self.run(ids, self.positions(g, g), ctx, rope=self.rope(g, g)).view(b, h, w, -1)

    def step(self, prev: torch.Tensor, index: int, ctx: TextContext, caches: list[KVCache]) -> torch.Tensor:
        """Logits [B, K] of position `index` given the previous token prev [B] (BOS at 0)."""
        g = self.config.grid
        pos = self.positions(g, g)[index:index + 1]
        return self.run(prev[:, None], pos, ctx, caches, self.rope(g, g, slice(index, index + 1)))[:, 0]
