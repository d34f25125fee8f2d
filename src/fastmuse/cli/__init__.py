"""`fastmuse <command>`: thin wrappers over the Python API.

Errors are one line on stderr and a non-zero exit; `--debug` shows the traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import FastMuseError
from . import bench, convert, data, distill, edit, evaluate, generate, serve, tokenizer, transformer

EXIT_ERROR = 1
EXIT_INTERNAL = 3


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

    data.register(sub)
    train = sub.add_parser("train", help="train models",
                           description="Train a model from a config JSON; runs resume exactly.")
    train_sub = train.add_subparsers(dest="train_command", metavar="MODEL", required=True)
    tokenizer.register(sub, train_sub)
    transformer.register(sub, train_sub)
    distill.register(sub)
    generate.register(sub)
    edit.register(sub)
    evaluate.register(sub)
    bench.register(sub)
    serve.register(sub)
    convert.register(sub)
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
