"""Encode each distinct caption once: training reads embeddings from this table.

The table is padded to the longest caption: hidden [N, L, D] (float16 on disk), pooled
[N, P], mask [N, L]; `rows(captions)` maps captions to row indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from tqdm import tqdm

from ..errors import DataError
from ..fsutil import atomic_write_bytes
from .encoders import TextEmbedding, TextEncoder


class EmbeddingCache:
    def __init__(self, captions: Sequence[str], table: TextEmbedding) -> None:
        if len(captions) != len(table):
            raise ValueError("one row per caption")
        self.captions = list(captions)
        self.table = table
        self._row = {c: i for i, c in enumerate(self.captions)}

    @classmethod
    def build(cls, encoder: TextEncoder, captions: Sequence[str], batch_size: int = 256,
              progress: bool = True) -> EmbeddingCache:
        unique = sorted(set(captions))
        parts = [encoder.encode(unique[i:i + batch_size])
                 for i in tqdm(range(0, len(unique), batch_size), desc="encode captions",
                               disable=not progress)]
        return cls(unique, TextEmbedding.cat(parts))

    def rows(self, captions: Sequence[str]) -> torch.Tensor:
        try:
            return torch.tensor([self._row[c] for c in captions], device="cpu")  # this table is on the CPU
        except KeyError as e:
            raise DataError(f"caption {e.args[0]!r} is not in the embedding cache") from None

    def lookup(self, rows: torch.Tensor) -> TextEmbedding:
        """Embeddings of the given rows, trimmed to their longest caption."""
        emb = self.table.index(rows)
        length = max(1, int(emb.mask.sum(1).max()))
        return TextEmbedding(emb.hidden[:, :length].float(), emb.pooled.float(), emb.mask[:, :length])

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save as to_bytes

        t = self.table
        meta = {"captions": "\n".join(self.captions)}
        if any("\n" in c for c in self.captions):
            raise DataError("captions must be single lines")
        atomic_write_bytes(path, to_bytes({"hidden": t.hidden.half().contiguous(),
                                           "pooled": t.pooled.contiguous(),
                                           "mask": t.mask.contiguous()}, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingCache:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            captions = (f.metadata() or {})["captions"].split("\n")
        t = load_file(str(path))
        return cls(captions, TextEmbedding(t["hidden"], t["pooled"], t["mask"]))


