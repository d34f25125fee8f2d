"""Argument types shared by the command modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def positive(name: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be >= 1, got {value}")
        return value

    return parse


def add_train_parser(train_sub: argparse._SubParsersAction, name: str, help: str, description: str,
                     out_help: str, func: Callable[[argparse.Namespace], None]) -> None:
    """`fastmuse train NAME --config --out [--resume] [--steps]`: the same for every model."""
    t = train_sub.add_parser(name, help=help, description=description)
    t.add_argument("--config", required=True, help="training config JSON")
    t.add_argument("--out", required=True, help=out_help)
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    t.add_argument("--steps", type=positive("--steps"), default=None,
                   help="override the config's total steps")
    t.set_defaults(func=func)


def load_train_config(config_class: Any, a: argparse.Namespace) -> Any:
    """The --config file, with --steps applied."""
    cfg = config_class.load(a.config)
    return cfg if a.steps is None else cfg.replace(steps=a.steps)
