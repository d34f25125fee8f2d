"""Arguments and output handling shared by the command modules."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

WEIGHT_DTYPES = ("fp32", "fp16", "bf16")  # hub.STORE_DTYPES' names (the CLI imports no torch at start)

DEFAULT_MODEL = "muse-128"
FAST_MODEL = "dimo-128"  # the bundled one-step model that scores best on the shapes suite
ORDERS = ("confidence", "halton")  # sampling.maskgit.ORDERS' names (the CLI imports no torch at start)


def bounded(name: str, kind: type = int, low: float | None = None, high: float | None = None
            ) -> Callable[[str], Any]:
    """An argparse type: `kind` (int or float) within [low, high], errors naming the option."""
    accepted = {int: "an integer", float: "a number"}[kind] + (
        f" in [{low}, {high}]" if low is not None and high is not None else
        f" >= {low}" if low is not None else "")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {accepted}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{name} must be {accepted}, got {text!r}")
        return value

    return parse


def positive(name: str) -> Callable[[str], int]:
    return bounded(name, int, 1)


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


def add_sampler_args(p: argparse.ArgumentParser, n_default: int = 1) -> None:
    """--model, --n, --seed and the sampler options: the same for generate and every edit."""
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled name or folder (default {DEFAULT_MODEL})")
    p.add_argument("--n", type=positive("--n"), default=n_default,
                   help=f"images per prompt (default {n_default})")
    p.add_argument("--seed", type=int, default=0, help="same seed, same images (default 0)")
    p.add_argument("--steps", type=int, default=None, help="decoding steps (default: the model's)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance g in l_c + g (l_c - l_u); 0 = off (default: the model's)")
    p.add_argument("--schedule", default=None, help="mask schedule: cosine, linear, square, sqrt")
    p.add_argument("--guidance-schedule", default=None, help="constant, linear or cosine")
    p.add_argument("--temperature", type=float, default=None, help="softmax temperature (default 1)")
    p.add_argument("--noise", type=float, default=None,
                   help="Gumbel noise on confidences, annealed to 0 (default 4.5)")
    p.add_argument("--top-k", type=bounded("--top-k", int, 0, None), default=None,
                   help="autoregressive models: sample among the k likeliest codes (default: the model's)")
    p.add_argument("--init-mask-ratio", type=float, default=None,
                   help="one-step models: fraction of the random initial tokens set to MASK")
    p.add_argument("--embed-noise", type=float, default=None,
                   help="one-step models: Gaussian noise on the initial token embeddings")
    p.add_argument("--solver", default=None,
                   help="diffusion models: ODE solver, euler or heun (default heun)")
    p.add_argument("--guidance-interval", type=interval, default=None, metavar="LO,HI",
                   help="masked models: guide only the steps i with LO <= i/steps < HI; the others cost "
                        "half (e.g. 0,0.5; default: the model's, normally 0,1 = every step)")
    p.add_argument("--order", default=None, choices=ORDERS,
                   help="masked models: which tokens each step keeps: confidence (MaskGIT, default) or "
                        "halton (a quasi-random low-discrepancy order over the grid, Halton-MaskGIT)")
    p.add_argument("--refine", type=bounded("--refine", int, 0, None), default=None,
                   help="masked models: rounds after the last step that re-mask the least likely "
                        "generated tokens and re-sample them (4 passes each; default: the model's)")
    p.add_argument("--refine-fraction", type=float, default=None,
                   help="masked models: share of the generated tokens a refine round re-samples")
    add_fast_args(p)


def interval(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--guidance-interval must be LO,HI (two numbers), "
                                         f"got {text!r}") from None
    return lo, hi


def add_fast_args(p: argparse.ArgumentParser) -> None:
    """--precision and --compile: Pipeline's fast modes (fastmuse/fast.py)."""
    from ..fast import PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto (default): bf16 on a GPU and on CPUs where it is faster (probed once per "
                        "machine, cached), else fp32; fp32: the reference; bf16: autocast (GPUs, "
                        "AVX-512-BF16 CPUs; slow on AVX2); int8: int8 linear layers, CPU, 1.2-1.6x "
                        "faster on AVX2 at a small quality cost")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer (the first call compiles: tens of seconds)")
    add_device_arg(p)


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:N, or auto (default: a CUDA GPU when torch sees one, else the CPU)")


def fast_options(a: argparse.Namespace) -> dict[str, Any]:
    return {"precision": a.precision, "compile": a.compile, "device": a.device}


def sampler_options(a: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments add_sampler_args collects, for Pipeline calls (unset ones left out)."""
    opts = {"n": a.n, "seed": a.seed, "steps": a.steps, "guidance": a.guidance}
    return opts | {k: v for k, v in (("schedule", a.schedule), ("guidance_schedule", a.guidance_schedule),
                                     ("temperature", a.temperature), ("noise", a.noise),
                                     ("top_k", a.top_k), ("init_mask_ratio", a.init_mask_ratio),
                                     ("embed_noise", a.embed_noise), ("solver", a.solver),
                                     ("guidance_interval", a.guidance_interval), ("order", a.order),
                                     ("refine", a.refine), ("refine_fraction", a.refine_fraction))
                   if v is not None}


def add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default=None, help="PNG to write (a grid when several images)")
    p.add_argument("--out-dir", default=None, help="also write each image as DIR/0000.png, ...")
    p.add_argument("--no-captions", action="store_true", help="grid without captions")


def check_outputs(a: argparse.Namespace) -> None:
    """Fail before any work when add_output_args got nowhere to write."""
    from ..errors import ConfigError

    if not a.output and not a.out_dir:
        raise ConfigError("nowhere to write: pass -o/--output FILE.png and/or --out-dir DIR")


def save_outputs(a: argparse.Namespace, images: list, captions: list[str], ncols: int | None = None,
                 panels: list | None = None) -> str:
    """Write -o (one image, or a grid led by `panels` with captions) and --out-dir; returns
    where, for the closing message."""
    from pathlib import Path

    from ..data.images import make_grid

    if a.out_dir:
        out_dir = Path(a.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            save_png(im, out_dir / f"{i:04d}.png")
    if a.output:
        shown = [im for im, _ in (panels or [])] + list(images)
        labels = [c for _, c in (panels or [])] + list(captions)
        picture = shown[0] if len(shown) == 1 else make_grid(
            shown, ncols=ncols, captions=None if a.no_captions else labels)
        save_png(picture, Path(a.output))
    return " and ".join(x for x in (a.output, a.out_dir and f"{a.out_dir}/") if x)


def save_png(image: Any, path: Any) -> None:
    import io

    from ..fsutil import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
