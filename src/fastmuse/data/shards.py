"""WebDataset tar shards: the format large pipelines (img2dataset and others) write.

A sample is a group of tar members sharing a key: an image (`.png`/`.jpg`/`.jpeg`/`.webp`),
a caption (`.txt`, or `"caption"` in `.json`) and optional `.json` metadata. Shards stream
through a shuffle buffer; shards are split over DDP ranks and DataLoader workers.

A broken member (undecodable image, missing caption, damaged tar) is skipped, counted in
`ShardDataset.skipped` (of this process) and logged with its shard and key.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from webdataset.shardlists import expand_urls

from ..errors import DataError
from ..fsutil import atomic_dir
from .folder import read_records
from .images import load_rgb, resize_crop, to_tensor
from .readers import reader_slot

log = logging.getLogger(__name__)
IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


def write_shards(src: str | Path, out: str | Path, maxcount: int = 1000) -> list[Path]:
    """Pack a folder dataset (see data/folder.py) into `out/shard-000000.tar`, ... (atomic).

    Images keep their encoded bytes; the whole captions.jsonl record goes into `.json`."""
    if maxcount < 1:
        raise DataError(f"maxcount is {maxcount}; accepted: maxcount >= 1")
    src, out = Path(src), Path(out)
    records = read_records(src)
    with atomic_dir(out) as tmp:
        # mtime=0 makes the shards byte-identical from run to run
        with wds.ShardWriter(str(tmp / "shard-%06d.tar"), maxcount=maxcount, verbose=0,
                             mtime=0) as sink:
            for i, r in enumerate(records):
                ext = Path(r["file"]).suffix.lower().lstrip(".")
                sink.write({
                    "__key__": f"{i:08d}",
                    ext: (src / r["file"]).read_bytes(),
                    "txt": r["caption"],
                    "json": json.dumps(r, ensure_ascii=False, sort_keys=True),
                })
    return sorted(out.glob("shard-*.tar"))


def resolve_urls(urls: str | Path | list[str]) -> list[str]:
    """Brace patterns ("data/shard-{000000..000009}.tar"), a folder of .tar files, or a list."""
    if isinstance(urls, Path) or (isinstance(urls, str) and Path(urls).is_dir()):
        found = sorted(str(p) for p in Path(urls).glob("*.tar"))
        if not found:
            raise DataError(f"no .tar shards in folder {urls}")
        return found
    out = expand_urls(urls) if isinstance(urls, str) else [str(u) for u in urls]
    local_missing = [u for u in out if "://" not in u and not u.startswith("pipe:")
                     and not Path(u).is_file()]
    if local_missing:
        raise DataError(f"shard not found: {local_missing[0]} ({len(local_missing)} of {len(out)} "
                        "missing)")
    if not out:
        raise DataError(f"no shards match {urls!r}")
    return out


class ShardDataset(torch.utils.data.IterableDataset):
    """Items are {"image": [3,S,S] in [-1,1], "caption": str, "key": str}."""

    def __init__(
        self,
        urls: str | Path | list[str],
        resolution: int,
        shuffle_buffer: int = 1000,
        crop: str = "random",
        seed: int = 0,
        repeat: bool = False,
    ) -> None:
        if shuffle_buffer < 0:
            raise DataError(f"shuffle_buffer is {shuffle_buffer}; accepted: >= 0 (0 = no shuffle)")
        self.urls = resolve_urls(urls)
        self.resolution, self.crop, self.seed = resolution, crop, seed
        self.shuffle_buffer, self.repeat = shuffle_buffer, repeat
        self.epoch = 0
        self.skipped = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _skip(self, where: str, why: str) -> None:
        self.skipped += 1
        log.warning("skipping %s: %s (%d skipped so far in this process)", where, why, self.skipped)

    def _on_tar_error(self, exc: Exception) -> bool:
        self._skip("damaged shard member", repr(exc))
        return True  # keep reading

    def _decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any] | None:
        where = f"{sample.get('__url__', '?')}:{sample.get('__key__', '?')}"
        ext = next((e for e in IMAGE_EXTS if e in sample), None)
        if ext is None:
            self._skip(where, f"no image member (has {sorted(k for k in sample if k[0] != '_')})")
            return None
        caption = sample["txt"].decode("utf-8", "replace").strip() if "txt" in sample else None
        if caption is None and "json" in sample:
            try:
                caption = json.loads(sample["json"]).get("caption")
            except (json.JSONDecodeError, AttributeError):
                caption = None
        if not isinstance(caption, str):
            self._skip(where, "no caption (.txt, or 'caption' in .json)")
            return None
        try:
            image = load_rgb(bytes(sample[ext]))
        except DataError as e:
            self._skip(where, str(e))
            return None
        image = resize_crop(image, self.resolution, self.crop, rng)
        return {"image": to_tensor(image), "caption": caption, "key": sample["__key__"]}

    def _my_shards(self, epoch: int, slot: int, nslots: int) -> list[str]:
        shards = list(self.urls)
        if self.shuffle_buffer:
            random.Random(f"{self.seed}-{epoch}").shuffle(shards)  # same order on every rank
        if len(shards) < nslots and epoch == self.epoch:
            log.warning("%d shards for %d readers: some readers get none", len(shards), nslots)
        return shards[slot::nslots]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch
        slot, nslots = reader_slot()
        while True:
            rng = random.Random(f"{self.seed}-{epoch}-{slot}")
            # webdataset stages are curried: stage(**options)(source)
            samples = wds.tarfile_to_samples(handler=self._on_tar_error)(
                [{"url": u} for u in self._my_shards(epoch, slot, nslots)]
            )
            if self.shuffle_buffer > 1:
                samples = wds.shuffle(self.shuffle_buffer, initial=min(100, self.shuffle_buffer),
                                      rng=rng)(samples)
            for s in samples:
                item = self._decode(s, rng)
                if item is not None:
                    yield item
            if not self.repeat:
                return
            epoch += 1
