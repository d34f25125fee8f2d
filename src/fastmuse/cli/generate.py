"""`fastmuse generate`: text to image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import ConfigError
from .common import (
    DEFAULT_MODEL,
    FAST_MODEL,
    add_output_args,
    add_sampler_args,
    check_outputs,
    fast_options,
    sampler_options,
    save_outputs,
)


def _read_prompts(a: argparse.Namespace) -> list[str]:
    prompts = list(a.prompt)
    if a.prompts_file:
        lines = Path(a.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError("prompt: none given; pass one or more prompts or --prompts-file")
    return prompts


def cmd_generate(a: argparse.Namespace) -> None:
    from ..pipeline import Pipeline, check_prompts

    prompts = check_prompts(_read_prompts(a))
    check_outputs(a)
    if a.fast:
        if a.stages or a.model != DEFAULT_MODEL:
            raise ConfigError("--fast picks the model itself; leave out --model and --stages")
        a.model = FAST_MODEL
    if a.stages:
        pipe, name = Pipeline.from_stages(a.stages, **fast_options(a)), " -> ".join(a.stages)
    else:
        pipe, name = Pipeline.from_pretrained(a.model, **fast_options(a)), a.model
    micro = dict(a.micro) if a.micro else None
    t0 = time.perf_counter()
    images = pipe(prompts, micro=micro, **sampler_options(a))
    took = time.perf_counter() - t0
    where = save_outputs(a, images, [p for p in prompts for _ in range(a.n)],
                         ncols=a.n if len(prompts) > 1 else None)
    print(f"wrote {len(images)} image(s) to {where} in {took:.2f}s ({pipe.resolution}px, {name})")


def micro_value(text: str) -> tuple[str, float | None]:
    """NAME=VALUE, VALUE a number or "none" (unknown)."""
    name, eq, value = text.partition("=")
    try:
        if not (eq and name):
            raise ValueError
        return name, None if value.lower() == "none" else float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--micro must be NAME=VALUE (a number or none), "
                                         f"got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="text to image",
                       description="Generate images from prompts with a masked transformer "
                                   "(MaskGIT decoding, classifier-free guidance). Same seed, same "
                                   "images. Several images go into one grid with captions.")
    g.add_argument("prompt", nargs="*", help="one or more prompts")
    g.add_argument("--prompts-file", default=None, help="more prompts, one per line")
    add_output_args(g)
    add_sampler_args(g)
    g.add_argument("--stages", nargs="+", default=None, metavar="MODEL",
                   help="two-stage generation instead of --model: a base model, then super-resolution "
                        "stages that upsample its tokens with their own sampler defaults, e.g. "
                        "--stages muse-64 muse-sr-128 (64 px, then 128 px)")
    g.add_argument("--fast", action="store_true",
                   help=f"the fastest bundled model that still draws: {FAST_MODEL} (one network "
                        f"evaluation per image instead of {DEFAULT_MODEL}'s guided steps)")
    g.add_argument("--micro", action="append", type=micro_value, default=None, metavar="NAME=VALUE",
                   help="a micro-condition of the (base) model, repeatable: orig_size, crop_top, crop_left "
                        "(px) and score (colourfulness, 0-120); none = unknown. Default: the model's "
                        "(its card lists them), e.g. --micro score=100")
    g.set_defaults(func=cmd_generate)
