"""`fastmuse inpaint | outpaint | edit | img2img | variations`: zero-shot editing."""

from __future__ import annotations

import argparse
import time

from .common import (
    add_output_args,
    add_sampler_args,
    bounded,
    check_outputs,
    fast_options,
    positive,
    sampler_options,
    save_outputs,
)

SIZE_RULE = ("Any image size: the image (outpaint: the extended canvas) is scaled so its shorter "
             "side fits the model, edited, and the result is resized back to the input's size.")


def _box(text: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"--box must be x0,y0,x1,y1 (4 integers, pixels), got {text!r}")
    return box  # type: ignore[return-value]


def cmd_edit(a: argparse.Namespace) -> None:
    from ..editing import open_image
    from ..pipeline import Pipeline

    check_outputs(a)
    image = open_image(a.image, "--image")  # fail on a bad file before loading the model
    pipe = Pipeline.from_pretrained(a.model, **fast_options(a))
    opts = sampler_options(a)
    t0 = time.perf_counter()
    if a.op == "inpaint":
        res = pipe.inpaint(image, a.prompt, a.mask, box=a.box, dilate=a.dilate, blend=not a.no_blend, **opts)
    elif a.op == "outpaint":
        res = pipe.outpaint(image, a.prompt, left=a.left, right=a.right, top=a.top, bottom=a.bottom,
                            blend=not a.no_blend, **opts)
    elif a.op == "edit":
        res = pipe.edit(image, a.prompt, a.strength, a.iterations, **opts)
    elif a.op == "img2img":
        res = pipe.img2img(image, a.prompt, a.strength, **opts)
    else:
        res = pipe.variations(image, strength=a.strength, prompt=a.prompt, **opts)
    took = time.perf_counter() - t0
    panels = [(res.input, "input"), (res.overlay(), "re-generated")] if a.compare else None
    label = a.prompt or "variation"
    where = save_outputs(a, res.images, [f"{label} (seed {a.seed}, #{i})" for i in range(len(res.images))],
                         panels=panels, ncols=len(res.images) + (2 if a.compare else 0))
    print(f"{a.op}: wrote {len(res.images)} image(s) of {res.images[0].size[0]}x{res.images[0].size[1]} "
          f"to {where} in {took:.2f}s ({int(res.mask[0].sum())}/{res.mask[0].numel()} tokens re-generated)")


def _parser(sub: argparse._SubParsersAction, op: str, help: str, description: str,
            prompt: bool = True, n_default: int = 1) -> argparse.ArgumentParser:
    p = sub.add_parser(op, help=help, description=f"{description} {SIZE_RULE}")
    if prompt:
        p.add_argument("prompt", help="what the result should show (describe the whole image)")
    p.add_argument("--image", required=True, help="input image file (any size, any mode)")
    add_output_args(p)
    p.add_argument("--compare", action="store_true",
                   help="-o grid starts with the input and the re-generated tokens in red")
    add_sampler_args(p, n_default)
    p.set_defaults(func=cmd_edit, op=op)
    return p


def register(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "inpaint", "re-generate a masked region",
                "Re-generate the tokens whose patch touches the mask (white = replace; grey levels "
                "thresholded at 128), keep every other token; pixels outside the mask are pasted "
                "back from the input unless --no-blend.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mask", default=None, help="mask image, white = replace (resized to the image "
                                                    "with a warning if its size differs)")
    where.add_argument("--box", type=_box, default=None, help="x0,y0,x1,y1: a rectangle to replace (pixels)")
    p.add_argument("--dilate", type=bounded("--dilate", int, 0), default=0,
                   help="grow the re-generated region by this many tokens (default 0)")
    p.add_argument("--no-blend", action="store_true", help="return the decoded image as is")

    p = _parser(sub, "outpaint", "extend an image beyond its borders",
                "Extend the canvas by the given pixels and generate the new area around the kept "
                "image; canvases larger than the model are generated in overlapping windows.")
    for side in ("left", "right", "top", "bottom"):
        p.add_argument(f"--{side}", type=bounded(f"--{side}", int, 0), default=0,
                       help=f"pixels to add on the {side}")
    p.add_argument("--no-blend", action="store_true", help="return the decoded image as is")

    p = _parser(sub, "edit", "mask-free, text-guided editing (Muse)",
                "Each iteration re-masks the fraction --strength of tokens least likely under the "
                "prompt and re-samples them: what disagrees with the prompt changes, the rest stays.")
    p.add_argument("--strength", type=bounded("--strength", float, 0, 1), default=0.3,
                   help="fraction of tokens re-masked per iteration (default 0.3)")
    p.add_argument("--iterations", type=positive("--iterations"), default=4,
                   help="re-mask/re-sample rounds (default 4)")

    p = _parser(sub, "img2img", "re-sample a random part of an image from a prompt",
                "Re-mask a random fraction --strength of the image's tokens and re-sample them "
                "with ceil(strength x steps) steps: 0 keeps the image, 1 generates anew.")
    p.add_argument("--strength", type=bounded("--strength", float, 0, 1), default=0.6, help="default 0.6")

    p = _parser(sub, "variations", "variations of an image",
                "img2img with several seeds; unconditional unless --prompt is given.",
                prompt=False, n_default=4)
    p.add_argument("--prompt", default=None, help="optional text to steer the variations")
    p.add_argument("--strength", type=bounded("--strength", float, 0, 1), default=0.5, help="default 0.5")
