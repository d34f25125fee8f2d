"""One entry point from a data source string to a torch dataset, for trainers and the CLI.

    shapes:SEED[:CATS]     the infinite procedural shapes stream (training); CATS: a comma
                           list of scene categories to keep (e.g. shapes:0:position)
    DIR                    a folder dataset (captions.jsonl or side .txt captions)
    DIR of *.tar, or a brace pattern "shards/shard-{000000..000009}.tar"   WebDataset shards
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import DataError
from .folder import CAPTIONS, ImageFolder
from .shards import ShardDataset


def open_dataset(
    source: str,
    resolution: int,
    split: str | None = None,
    train: bool = False,
    seed: int = 0,
) -> torch.utils.data.Dataset:
    """Items are {"image": [3,R,R] in [-1,1], "caption": str, ...}. `train` picks random crops
    (and shuffling/repeating for shards); evaluation uses center crops."""
    crop = "random" if train else "center"
    if source.startswith("shapes:"):
        from .shapes import ShapesStream, parse_source

        shapes_seed, categories = parse_source(source)
        return ShapesStream(seed=shapes_seed, resolution=resolution, categories=categories)
    path = Path(source)
    is_shards = ".tar" in source or (path.is_dir() and any(path.glob("*.tar"))
                                     and not (path / CAPTIONS).is_file())
    if is_shards:
        return ShardDataset(source, resolution, shuffle_buffer=1000 if train else 0, crop=crop,
                            seed=seed, repeat=train)
    if not path.exists():
        raise DataError(f"data source {source!r} not found; accepted: a folder, .tar shards "
                        "(brace patterns allowed) or shapes:SEED")
    return ImageFolder(path, resolution, split=split, crop=crop, seed=seed)
