"""Pre-tokenized training data: every image as VQ tokens, every caption embedded once.

Masked-transformer training never touches pixels or the text encoder: it reads

    DIR/train.safetensors   tokens [N, h, w] int16, cap_offsets [N+1], cap_rows [M]
    DIR/val.safetensors     the same for the held-out split
    DIR/captions.safetensors  the EmbeddingCache of all captions (+ "" for dropout)
    DIR/info.json           what was encoded with what (the cache key)

Sample i's captions are rows cap_rows[cap_offsets[i]:cap_offsets[i+1]] of the cache; the
first is the main caption, the rest alternatives (emoji's `alt_captions`). The folder
name is a hash of info.json, so a changed source, tokenizer or encoder makes a new cache.

Views (`views=(R, crops)`): each image is read at R px and stored as its whole view
resized to `resolution`, then `crops` random crops of it (SDXL's augmentation) resized the
same; the splits then also hold `micro` [N, 4], the micro-conditions of each row:

    orig_size  px the whole image has at this row's scale (resolution for the whole view,
               resolution * R / c for a crop of c px: the crop is that size image's window)
    crop_top, crop_left   the window's corner in that image, px
    score      colourfulness (Hasler & Suesstrunk 2003) of the row's image on 0..255 RGB:
               std + 0.3 * mean of the opponent channels rg = R - G, yb = (R + G) / 2 - B;
               0 for grey; median 55, 95th percentile 107 over our emoji and shapes views

Row i * (1 + crops) + k of a source is its image i's view k (0: whole), so a `views=(R, 0)`
cache at 64 px pairs row for row with the R px cache (super-resolution data).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
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
    micro: torch.Tensor | None = None  # [N, 4] float, MICRO_CONDS order (caches built with views)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def caption_rows(self, i: int) -> torch.Tensor:
        return self.cap_rows[self.cap_offsets[i]:self.cap_offsets[i + 1]]

    @staticmethod
    def load(path: Path) -> TokenSplit:
        t = load_file(str(path))
        return TokenSplit(t["tokens"].long(), t["cap_offsets"].long(), t["cap_rows"].long(), t.get("micro"))


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
        from .images import to_tensor
        from .shapes import is_val as shapes_is_val
        from .shapes import parse_source, render_scene, scene_at

        seed, categories = parse_source(source)
        found = 0
        for index in itertools.count():
            if found >= limit:
                return
            if shapes_is_val(seed, index) != (split == "val"):
                continue
            scene = scene_at(seed, index, resolution)
            if not categories or scene.category in categories:
                yield to_tensor(render_scene(scene, resolution)), [scene.caption]
                found += 1
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


def colourfulness(image: torch.Tensor) -> float:
    """Hasler & Suesstrunk's colourfulness of an image [3, H, W] in [-1, 1]."""
    r, g, b = ((image.float() + 1) * 127.5).clamp(0, 255)
    rg, yb = r - g, (r + g) / 2 - b
    return float(torch.hypot(rg.std(), yb.std()) + 0.3 * torch.hypot(rg.mean(), yb.mean()))


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-1] == size:
        return image
    return F.interpolate(image[None], size=(size, size), mode="bicubic", antialias=True)[0].clamp(-1, 1)


def views(image: torch.Tensor, resolution: int, crops: int, key: str) -> Iterator[tuple[torch.Tensor, list]]:
    """(view [3, res, res], micro [orig_size, crop_top, crop_left, score]): the whole image, then
    `crops` windows of 50-90% of its side at random corners (a function of `key`)."""
    r = image.shape[-1]
    whole = _resize(image, resolution)
    yield whole, [float(resolution), 0.0, 0.0, round(colourfulness(whole), 2)]
    rng = random.Random(key)
    for _ in range(crops):
        c = round(r * rng.uniform(0.5, 0.9))
        top, left = rng.randint(0, r - c), rng.randint(0, r - c)
        view = _resize(image[:, top:top + c, left:left + c], resolution)
        k = resolution / c  # px of the output per px of the source
        yield view, [round(r * k, 2), round(top * k, 2), round(left * k, 2), round(colourfulness(view), 2)]


@torch.no_grad()
def _tokenize(items: Iterator[tuple[torch.Tensor, list[str]]], tokenizer, batch_size: int, desc: str,
              total: int | None, view: tuple[int, int] | None,
              resolution: int) -> tuple[torch.Tensor | None, list[list[str]], list[list[float]]]:
    """Encode images (or their `views`) in batches: (tokens [N, h, w] int16 or None if no
    items, captions, micro-conditions: one list per row if `view`)."""
    toks: list[torch.Tensor] = []
    caps: list[list[str]] = []
    micro: list[list[float]] = []
    images: list[torch.Tensor] = []
    for i, (image, captions) in enumerate(tqdm(items, desc=desc, total=total)):
        for im, m in (views(image, resolution, view[1], f"{desc}/{i}") if view else [(image, None)]):
            images.append(im)
            caps.append(captions)
            if m is not None:
                micro.append(m)
        if len(images) >= batch_size:
            toks.append(tokenizer.encode(torch.stack(images)).to(torch.int16))
            images = []
    if images:
        toks.append(tokenizer.encode(torch.stack(images)).to(torch.int16))
    return (torch.cat(toks) if toks else None), caps, micro


def cache_key(info: dict) -> str:
    return hashlib.sha256(json.dumps(info, sort_keys=True).encode()).hexdigest()[:16]


def build_token_data(sources: list[str], tokenizer, encoder, resolution: int, cache_dir: str | Path,
                     shapes_train: int, shapes_val: int, tokenizer_id: str,
                     batch_size: int = 32, views: tuple[int, int] | None = None) -> TokenData:
    """Tokenize + embed `sources` into cache_dir/<hash> unless already there; load it.
    `views` (read resolution, crops per image): see the module docstring."""
    info = {"sources": list(sources), "resolution": resolution, "tokenizer": tokenizer_id,
            "text_encoder": encoder.name, "shapes_train": shapes_train, "shapes_val": shapes_val,
            "version": 1}
    if views is not None:  # only then, so that caches built before views keep their hash
        info["views"] = {"read_resolution": views[0], "crops": views[1]}
    if encoder.caption_rule:  # likewise
        info["caption_rule"] = encoder.caption_rule
    folder = Path(cache_dir) / cache_key(info)
    if (folder / INFO).is_file():
        return TokenData.load(folder)
    grid = resolution // tokenizer.downsample
    splits: dict[str, tuple[list[torch.Tensor], list[list[str]], list[list[float]]]] = {}
    counts: dict[str, list[int]] = {}
    for split in ("train", "val"):
        toks: list[torch.Tensor] = []
        caps: list[list[str]] = []
        micro: list[list[float]] = []
        for source in sources:
            limit = (shapes_train if split == "train" else shapes_val) if source.startswith("shapes:") \
                else None
            items = _items(source, views[0] if views else resolution, split, limit or 1 << 62)
            t, c, m = _tokenize(items, tokenizer, batch_size, f"tokenize {source} {split}", limit, views,
                                resolution)
            toks.append(t if t is not None else torch.zeros(0, grid, grid, dtype=torch.int16))
            caps += c
            micro += m
            counts.setdefault(split, []).append(len(c))
        if split == "train" and not caps:
            raise DataError(f"no train images in {sources}")
        splits[split] = (toks, caps, micro)
    all_caps = [""] + [c for _, caps, _ in splits.values() for cs in caps for c in cs]
    cache = EmbeddingCache.build(encoder, all_caps)
    with atomic_dir(folder) as tmp:
        for split, (toks, caps, micro) in splits.items():
            tokens = torch.cat(toks)
            offsets = torch.tensor([0] + [len(c) for c in caps]).cumsum(0)
            rows = cache.rows([c for cs in caps for c in cs])
            extra = {"micro": torch.tensor(micro, dtype=torch.float32).view(-1, 4)} if views else {}
            (tmp / f"{split}.safetensors").write_bytes(to_bytes(
                {"tokens": tokens, "cap_offsets": offsets, "cap_rows": rows, **extra}))
        cache.save(tmp / "captions.safetensors")
        (tmp / INFO).write_text(json.dumps({**info, "counts": counts}, indent=2) + "\n")
    return TokenData.load(folder)
