"""`fastmuse generate`: text to image."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import positive

DEFAULT_MODEL = "muse-128"


def _read_prompts(a: argparse.Namespace) -> list[str]:
    from ..errors import ConfigError

    prompts = list(a.prompt)
    if a.prompts_file:
        lines = Path(a.prompts_file).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise ConfigError("prompt: none given; pass one or more prompts or --prompts-file")
    return prompts


def cmd_generate(a: argparse.Namespace) -> None:
    from ..data.images import make_grid
    from ..errors import ConfigError
    from ..pipeline import Pipeline, check_prompts

    prompts = check_prompts(_read_prompts(a))
    if not a.output and not a.out_dir:
        raise ConfigError("nowhere to write: pass -o/--output FILE.png and/or --out-dir DIR")
    pipe = Pipeline.from_pretrained(a.model)
    sampler = {k: v for k, v in (("schedule", a.schedule), ("guidance_schedule", a.guidance_schedule),
                                 ("temperature", a.temperature), ("noise", a.noise)) if v is not None}
    t0 = time.perf_counter()
    images = pipe(prompts, n=a.n, steps=a.steps, guidance=a.guidance, seed=a.seed, **sampler)
    took = time.perf_counter() - t0
    captions = [p for p in prompts for _ in range(a.n)]
    if a.out_dir:
        out_dir = Path(a.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, im in enumerate(images):
            _save_png(im, out_dir / f"{i:04d}.png")
    if a.output:
        picture = images[0] if len(images) == 1 else make_grid(
            images, ncols=a.n if len(prompts) > 1 else None, captions=None if a.no_captions else captions)
        _save_png(picture, Path(a.output))
    where = " and ".join(x for x in (a.output, a.out_dir and f"{a.out_dir}/") if x)
    print(f"wrote {len(images)} image(s) to {where} in {took:.2f}s ({pipe.resolution}px, {a.model})")


def _save_png(image, path: Path) -> None:
    import io

    from ..fsutil import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="text to image",
                       description="Generate images from prompts with a masked transformer "
                                   "(MaskGIT decoding, classifier-free guidance). Same seed, same "
                                   "images. Several images go into one grid with captions.")
    g.add_argument("prompt", nargs="*", help="one or more prompts")
    g.add_argument("--prompts-file", default=None, help="more prompts, one per line")
    g.add_argument("-o", "--output", default=None, help="PNG to write (a grid when several images)")
    g.add_argument("--out-dir", default=None, help="also write each image as DIR/0000.png, ...")
    g.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled name or folder (default {DEFAULT_MODEL})")
    g.add_argument("--n", type=positive("--n"), default=1, help="images per prompt (default 1)")
    g.add_argument("--steps", type=int, default=None, help="decoding steps (default: the model's, 12)")
    g.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance g in l_c + g (l_c - l_u); 0 = off (default: the model's)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--schedule", default=None, help="mask schedule: cosine, linear, square, sqrt")
    g.add_argument("--guidance-schedule", default=None, help="constant, linear or cosine")
    g.add_argument("--temperature", type=float, default=None, help="softmax temperature (default 1)")
    g.add_argument("--noise", type=float, default=None,
                   help="Gumbel noise on confidences, annealed to 0 (default 4.5)")
    g.add_argument("--no-captions", action="store_true", help="grid without captions")
    g.set_defaults(func=cmd_generate)
