"""Pre-tokenized training data: every image as VQ tokens, every caption embedded once.

Masked-transformer training never touches pixels or the text encoder: it reads

    DIR/train.safetensors   tokens [N, h, w] int16, cap_offsets [N+1], cap_rows [M]
    DIR/val.safetensors     the same for the held-out split
    DIR/captions.safetensors  the EmbeddingCache of all captions (+ "" for dropout)
    DIR/info.json           what was encoded with what (the cache key)

Sample i's captions are rows cap_rows[cap_offsets[i]:cap_offsets[i+1]] of the cache; the
first is the main caption, the rest alternatives (emoji's `alt_captions`). The folder
name is a hash of info.json, so a changed source, tokenizer or encoder makes a new cache.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from safetensors.torch import save as to_bytes
from tqdm import tqdm

from ..errors import DataError
from ..fsutil import atomic_dir
from ..text.cache import EmbeddingCache

INFO = "info.json"


@dataclass
class TokenSplit:
    tokens: torch.Tensor  # [N, h, w] long
    cap_offsets: torch.Tensor  # [N + 1]
    cap_rows: torch.Tensor  # [M]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def caption_rows(self, i: int) -> torch.Tensor:
        return self.cap_rows[self.cap_offsets[i]:self.cap_offsets[i + 1]]

    @staticmethod
    def load(path: Path) -> TokenSplit:
        t = load_file(str(path))
        return TokenSplit(t["tokens"].long(), t["cap_offsets"].long(), t["cap_rows"].long())


@dataclass
class TokenData:
    folder: Path
    info: dict
    train: TokenSplit
    val: TokenSplit
    captions: EmbeddingCache

    @staticmethod
    def load(folder: str | Path) -> TokenData:
        folder = Path(folder)
        if not (folder / INFO).is_file():
            raise DataError(f"{folder}: not a token cache (no {INFO})")
        return TokenData(folder, json.loads((folder / INFO).read_text(encoding="utf-8")),
                         TokenSplit.load(folder / "train.safetensors"),
                         TokenSplit.load(folder / "val.safetensors"),
                         EmbeddingCache.load(folder / "captions.safetensors"))


def _items(source: str, resolution: int, split: str, limit: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """(image [3,R,R], [caption, *alternatives]) of one source's split, center-cropped."""
    if source.startswith("shapes:"):
        from .shapes import is_val as shapes_is_val
        from .shapes import render_scene, scene_at

        seed = int(source.split(":", 1)[1])
        from .images import to_tensor

        index, found = 0, 0
        while found < limit:
            if shapes_is_val(seed, index) == (split == "val"):
                scene = scene_at(seed, index, resolution)
                yield to_tensor(render_scene(scene, resolution)), [scene.caption]
                found += 1
            index += 1
        return
    from .sources import open_dataset

    try:
        ds = open_dataset(source, resolution, split=split)
    except DataError:
        if split == "val":  # a source without a val split just adds nothing to it
            return
        raise
    records = getattr(ds, "records", None)
    for i, item in enumerate(ds):
        if i >= limit:
            return
        alts = list(records[i].get("alt_captions", [])) if records is not None else []
        yield item["image"], [item["caption"], *[a for a in alts if isinstance(a, str) and a]]


@torch.no_grad()
def _tokenize(items: Iterator[tuple[torch.Tensor, list[str]]], tokenizer, batch_size: int, desc: str,
              total: int | None) -> tuple[torch.Tensor | None, list[list[str]]]:
    """Encode images in batches: (tokens [N, h, w] int16 or None if no items, captions)."""
    toks: list[torch.Tensor] = []
    caps: list[list[str]] = []
    images: list[torch.Tensor] = []
    for image, captions in tqdm(items, desc=desc, total=total):
        images.append(image)
        caps.append(captions)
        if len(images) == batch_size:
            toks.append(tokenizer.encode(torch.stack(images)).to(torch.int16))
            images = []
    if images:
        toks.append(tokenizer.encode(torch.stack(images)).to(torch.int16))
    return (torch.cat(toks) if toks else None), caps


def cache_key(info: dict) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def build_token_data(sources: list[str], tokenizer, encoder, resolution: int, cache_dir: str | Path,
                     shapes_train: int, shapes_val: int, tokenizer_id: str,
                     batch_size: int = 32) -> TokenData:
    """Tokenize + embed `sources` into cache_dir/<hash> unless already there; load it."""
    info = {"sources": list(sources), "resolution": resolution, "tokenizer": tokenizer_id,
            "text_encoder": encoder.name, "shapes_train": shapes_train, "shapes_val": shapes_val,
            "version": 1}
    folder = Path(cache_dir) / cache_key(info)
    if (folder / INFO).is_file():
        return TokenData.load(folder)
    grid = resolution // tokenizer.downsample
    splits: dict[str, tuple[list[torch.Tensor], list[list[str]]]] = {}
    counts: dict[str, list[int]] = {}
    for split in ("train", "val"):
        toks: list[torch.Tensor] = []
        caps: list[list[str]] = []
        for source in sources:
            limit = (shapes_train if split == "train" else shapes_val) if source.startswith("shapes:") \
                else None
            t, c = _tokenize(_items(source, resolution, split, limit or 1 << 62), tokenizer, batch_size,
                             f"tokenize {source} {split}", limit)
            toks.append(t if t is not None else torch.zeros(0, grid, grid, dtype=torch.int16))
            caps += c
            counts.setdefault(split, []).append(len(c))
        if split == "train" and not caps:
            raise DataError(f"no train images in {sources}")
        splits[split] = (toks, caps)
    all_caps = [""] + [c for _, caps in splits.values() for cs in caps for c in cs]
    cache = EmbeddingCache.build(encoder, all_caps)
    with atomic_dir(folder) as tmp:
        for split, (toks, caps) in splits.items():
            tokens = torch.cat(toks)
            offsets = torch.tensor([0] + [len(c) for c in caps]).cumsum(0)
            rows = cache.rows([c for cs in caps for c in cs])
            (tmp / f"{split}.safetensors").write_bytes(to_bytes(
                {"tokens": tokens, "cap_offsets": offsets, "cap_rows": rows}))
        cache.save(tmp / "captions.safetensors")
        (tmp / INFO).write_text(json.dumps({**info, "counts": counts}, indent=2) + "\n")
    return TokenData.load(folder)
