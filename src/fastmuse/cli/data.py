"""`fastmuse data ...` and `fastmuse checkpoint ...`."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

from ..errors import FastMuseError
from .common import positive


def cmd_emoji(a: argparse.Namespace) -> None:
    from ..data.emoji import build_emoji

    out = build_emoji(a.out, resolution=a.resolution, limit=a.limit, skin_tones=a.skin_tones)
    print(f"wrote {out} (card: {out / 'README.md'}, preview: {out / 'preview.png'})")


def cmd_shapes(a: argparse.Namespace) -> None:
    from ..data.shapes import build_shapes

    out = build_shapes(a.out, n=a.n, seed=a.seed, resolution=a.resolution)
    print(f"wrote {out} (card: {out / 'README.md'}, preview: {out / 'preview.png'})")


def cmd_shards(a: argparse.Namespace) -> None:
    from ..data.shards import write_shards

    shards = write_shards(a.src, a.out, maxcount=a.maxcount)
    print(f"wrote {len(shards)} shards to {a.out}")


def cmd_preview(a: argparse.Namespace) -> None:
    from torch.utils.data import IterableDataset

    from ..data.images import make_grid, spread, to_pil
    from ..data.sources import open_dataset

    ds = open_dataset(a.source, a.resolution, split=a.split)
    if isinstance(ds, IterableDataset):
        items = list(itertools.islice(ds, a.n))
    else:
        items = [ds[i] for i in spread(len(ds), a.n)]
    if not items:
        raise FastMuseError(f"source {a.source!r} yielded no samples")
    grid = make_grid([to_pil(x["image"]) for x in items], ncols=min(8, len(items)),
                     captions=[x["caption"] for x in items])
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    grid.save(a.output)
    print(f"wrote {a.output} ({len(items)} samples from {a.source})")


def cmd_verify(a: argparse.Namespace) -> None:
    from ..hub import load_checkpoint

    ckpt = load_checkpoint(a.model)
    print(f"ok: {ckpt.folder} ({len(ckpt.files)} files match the manifest; "
          f"kind {ckpt.config.get('kind')!r})")


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser("data", help="build and inspect datasets",
                          description="Build datasets (images + captions.jsonl + card + preview).")
    dsub = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)

    e = dsub.add_parser("emoji", help="OpenMoji emoji with CLDR captions (~2,000 images)",
                        description="Render the OpenMoji emoji set on white with CLDR captions.")
    e.add_argument("--out", required=True, help="output folder (replaced atomically)")
    e.add_argument("--resolution", type=positive("--resolution"), default=128,
                   help="image side in pixels (default 128)")
    e.add_argument("--limit", type=positive("--limit"), default=None,
                   help="only the first N emoji (by code point)")
    e.add_argument("--skin-tones", action="store_true", help="include skin-tone variants")
    e.set_defaults(func=cmd_emoji)

    s = dsub.add_parser("shapes", help="procedural shapes scenes with exact ground truth",
                        description="Generate seeded scenes of 1-4 coloured shapes with template "
                                    "captions; byte-identical for the same seed.")
    s.add_argument("--out", required=True, help="output folder (replaced atomically)")
    s.add_argument("--n", type=positive("--n"), default=1000, help="number of scenes (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    s.add_argument("--resolution", type=positive("--resolution"), default=128,
                   help="image side in pixels (default 128)")
    s.set_defaults(func=cmd_shapes)

    w = dsub.add_parser("shards", help="pack a folder dataset into WebDataset .tar shards",
                        description="Pack a folder dataset into WebDataset tar shards.")
    w.add_argument("--src", required=True, help="folder dataset (captions.jsonl or side .txt)")
    w.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar")
    w.add_argument("--maxcount", type=positive("--maxcount"), default=1000,
                   help="samples per shard (default 1000)")
    w.set_defaults(func=cmd_shards)

    v = dsub.add_parser("preview", help="write a grid of samples from any data source",
                        description="Read a data source through the training loader and write "
                                    "a grid: a folder (samples spread over it), .tar shards (the "
                                    "first samples; brace patterns allowed) or shapes:SEED[:CATEGORIES].")
    v.add_argument("source", help="folder, shards or shapes:SEED[:CATEGORIES] (e.g. shapes:0:position)")
    v.add_argument("-o", "--output", required=True, help="PNG to write")
    v.add_argument("--n", type=positive("--n"), default=32, help="samples (default 32)")
    v.add_argument("--resolution", type=positive("--resolution"), default=128)
    v.add_argument("--split", choices=["train", "val"], default=None,
                   help="only this split of a folder dataset")
    v.set_defaults(func=cmd_preview)

    ck = sub.add_parser("checkpoint", help="inspect checkpoint folders")
    cksub = ck.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    cv = cksub.add_parser("verify", help="check every file against the manifest's sha256",
                          description="Verify a checkpoint folder (or bundled model name).")
    cv.add_argument("model", help="checkpoint folder or bundled model name")
    cv.set_defaults(func=cmd_verify)
