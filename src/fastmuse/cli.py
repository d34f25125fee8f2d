"""`fastmuse <command>`: thin wrappers over the Python API.

Errors are one line on stderr and a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import FastMuseError

EXIT_ERROR = 1
EXIT_INTERNAL = 3


def _positive(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


# -- data ------------------------------------------------------------------------------------
def cmd_data_emoji(a: argparse.Namespace) -> None:
    from .data.emoji import build_emoji

    out = build_emoji(a.out, resolution=a.resolution, limit=a.limit, skin_tones=a.skin_tones)
    print(f"wrote {out} (card: {out / 'README.md'}, preview: {out / 'preview.png'})")


def cmd_data_shapes(a: argparse.Namespace) -> None:
    from .data.shapes import build_shapes

    out = build_shapes(a.out, n=a.n, seed=a.seed, resolution=a.resolution)
    print(f"wrote {out} (card: {out / 'README.md'}, preview: {out / 'preview.png'})")


def cmd_data_shards(a: argparse.Namespace) -> None:
    from .data.shards import write_shards

    shards = write_shards(a.src, a.out, maxcount=a.maxcount)
    print(f"wrote {len(shards)} shards to {a.out}")


def cmd_data_preview(a: argparse.Namespace) -> None:
    from torch.utils.data import IterableDataset

    from .data.images import make_grid, spread, to_pil
    from .data.sources import open_dataset

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


# -- checkpoints -----------------------------------------------------------------------------
def cmd_checkpoint_verify(a: argparse.Namespace) -> None:
    from .hub import load_checkpoint

    ckpt = load_checkpoint(a.model)
    print(f"ok: {ckpt.folder} ({len(ckpt.files)} files match the manifest; "
          f"kind {ckpt.config.get('kind')!r})")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line like every other error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="fastmuse",
        description="Fast text-to-image with masked generative transformers: build data, "
                    "train, distill, evaluate, generate, edit and serve.",
        epilog="Run `fastmuse COMMAND --help` for a command's options.",
    )
    p.add_argument("--version", action="version", version=f"fastmuse {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data = sub.add_parser("data", help="build and inspect datasets",
                          description="Build datasets (images + captions.jsonl + card + preview).")
    dsub = data.add_subparsers(dest="data_command", metavar="DATASET", required=True)

    e = dsub.add_parser("emoji", help="OpenMoji emoji with CLDR captions (~2,000 images)",
                        description="Render the OpenMoji emoji set on white with CLDR captions.")
    e.add_argument("--out", required=True, help="output folder (replaced atomically)")
    e.add_argument("--resolution", type=_positive("--resolution"), default=128,
                   help="image side in pixels (default 128)")
    e.add_argument("--limit", type=_positive("--limit"), default=None,
                   help="only the first N emoji (by code point)")
    e.add_argument("--skin-tones", action="store_true", help="include skin-tone variants")
    e.set_defaults(func=cmd_data_emoji)

    s = dsub.add_parser("shapes", help="procedural shapes scenes with exact ground truth",
                        description="Generate seeded scenes of 1-4 coloured shapes with template "
                                    "captions; byte-identical for the same seed.")
    s.add_argument("--out", required=True, help="output folder (replaced atomically)")
    s.add_argument("--n", type=_positive("--n"), default=1000, help="number of scenes (default 1000)")
    s.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    s.add_argument("--resolution", type=_positive("--resolution"), default=128,
                   help="image side in pixels (default 128)")
    s.set_defaults(func=cmd_data_shapes)

    w = dsub.add_parser("shards", help="pack a folder dataset into WebDataset .tar shards",
                        description="Pack a folder dataset into WebDataset tar shards.")
    w.add_argument("--src", required=True, help="folder dataset (captions.jsonl or side .txt)")
    w.add_argument("--out", required=True, help="output folder for shard-NNNNNN.tar")
    w.add_argument("--maxcount", type=_positive("--maxcount"), default=1000,
                   help="samples per shard (default 1000)")
    w.set_defaults(func=cmd_data_shards)

    v = dsub.add_parser("preview", help="write a grid of samples from any data source",
                        description="Read a data source through the training loader and write "
                                    "a grid: a folder (samples spread over it), .tar shards "
                                    "(the first samples; brace patterns allowed) or shapes:SEED.")
    v.add_argument("source", help="folder, shards or shapes:SEED")
    v.add_argument("-o", "--output", required=True, help="PNG to write")
    v.add_argument("--n", type=_positive("--n"), default=32, help="samples (default 32)")
    v.add_argument("--resolution", type=_positive("--resolution"), default=128)
    v.add_argument("--split", choices=["train", "val"], default=None,
                   help="only this split of a folder dataset")
    v.set_defaults(func=cmd_data_preview)

    ck = sub.add_parser("checkpoint", help="inspect checkpoint folders")
    cksub = ck.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    cv = cksub.add_parser("verify", help="check every file against the manifest's sha256",
                          description="Verify a checkpoint folder (or bundled model name).")
    cv.add_argument("model", help="checkpoint folder or bundled model name")
    cv.set_defaults(func=cmd_checkpoint_verify)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line, not only before the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    args.debug = debug
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("fastmuse: interrupted", file=sys.stderr)
        return 130
    except FastMuseError as e:
        if args.debug:
            raise
        print(f"fastmuse: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug for us
        if args.debug:
            raise
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"fastmuse: internal error: {type(e).__name__}: {msg} (rerun with --debug for "
              "the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    return 0
