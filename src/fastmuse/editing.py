"""Zero-shot editing with the text-to-image model (Muse, Meissonic): no fine-tuning, the
sampler starts from the source image's tokens with MASK wherever something new should go.

    pipe.inpaint(image, prompt, mask=mask_png)            # or box=(x0, y0, x1, y1)
    pipe.outpaint(image, prompt, right=64)                # extend the canvas, fill the new part
    pipe.edit(image, prompt, strength=0.3)                # mask-free: re-mask what the prompt rejects
    pipe.img2img(image, prompt, strength=0.6)             # re-mask a random fraction
    pipe.variations(image, n=4)                           # img2img without (or with) a prompt

Every call returns an EditResult: PIL images at the input's size (outpainting: the extended
canvas's size) and the token canvases, so callers can check what changed.

Size rule (one for all operations). The canvas (the image, or for outpainting the extended
image) is scaled by max(R / canvas shorter side, min(1, R / image shorter side)), R the model
resolution: large images come down until their shorter side is R, and a canvas whose shorter
side is below R is scaled up to R. Both sides are then rounded to multiples of the token size
(bicubic resize), the canvas is tokenized and edited, decoded, and resized back to the input's
size. Canvases larger than the model grid are sampled in overlapping windows
(sampling/windows.py), so outpainting can grow an image well past R. The work is bounded: a
canvas's aspect ratio is at most MAX_ASPECT:1 and its scaled area at most MAX_CANVAS_AREA R x R
squares (a 3x1000 px image would otherwise become hundreds of windows).

Masks: a PIL image, a file, or a 2-D array; white = replace. Grey levels are thresholded at 128
(float arrays at 0.5; transparent pixels count as black). A mask of another size is resized to
the image's (nearest) with a warning. A token is re-generated when its patch touches the mask,
grown by `dilate` tokens. With `blend` (default), pixels outside the mask are the input's own
pixels, with a `FEATHER`-px soft band just inside the mask edge, so nothing outside it changes.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter

from .data.images import load_rgb, to_rgb, to_tensor
from .errors import ConfigError
from .fast import inference
from .sampling.maskgit import guidance_context, token_logprob
from .sampling.noise import random
from .sampling.windows import windows
from .text.encoders import check_prompts

if TYPE_CHECKING:
    from .pipeline import Pipeline
    from .sampling.families import SamplingRun

MASK_THRESHOLD = 128
FEATHER = 2  # px: soft band inside the mask edge when blending back
MAX_ASPECT = 4.0  # longer / shorter side of a canvas
MAX_CANVAS_AREA = 16  # a scaled canvas holds at most this many model-resolution squares


@dataclass
class EditResult:
    images: list[Image.Image]  # at the input's size (outpainting: the extended canvas's)
    tokens: torch.Tensor       # [n, h, w] the edited token canvases
    source: torch.Tensor       # [h, w] the input's tokens on the same canvas
    mask: torch.Tensor         # [n, h, w] bool: the tokens that were re-generated
    input: Image.Image         # the input at the images' size (outpainting: edge-padded canvas)

    def overlay(self, row: int = 0) -> Image.Image:
        """The input with row `row`'s re-generated tokens tinted red: what the model redrew."""
        m = Image.fromarray(self.mask[row].numpy().astype(np.uint8) * 255)
        m = m.resize(self.input.size, Image.Resampling.NEAREST)
        red = Image.new("RGB", self.input.size, (230, 30, 30))
        return Image.composite(Image.blend(self.input, red, 0.55), self.input, m)


ImageLike = Image.Image | str | os.PathLike


def open_image(image: ImageLike, what: str = "image") -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, (str, os.PathLike)):
        return load_rgb(image)
    raise ConfigError(f"{what} is a {type(image).__name__}; accepted: a PIL image or an image file path")


def fit_scale(canvas: tuple[int, int], image: tuple[int, int], resolution: int) -> float:
    """The size rule above: shrink big images to R, grow small canvases to R."""
    return max(resolution / min(canvas), min(1.0, resolution / min(image)))


def scaled_size(size: tuple[int, int], scale: float, f: int) -> tuple[int, int]:
    w, h = size
    return max(f, round(w * scale / f) * f), max(f, round(h * scale / f) * f)


def canvas_size(canvas: tuple[int, int], image: tuple[int, int], resolution: int, f: int) -> tuple[int, int]:
    """The working canvas (px) under the size rule, refused when the work it implies is not
    bounded: a thin image would become a canvas of hundreds of windows."""
    w, h = canvas
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ConfigError(f"the canvas is {w}x{h} px (aspect ratio {max(w, h) / min(w, h):.1f}:1); "
                          f"accepted: at most {MAX_ASPECT:g}:1")
    size = scaled_size(canvas, fit_scale(canvas, image, resolution), f)
    limit = MAX_CANVAS_AREA * resolution * resolution
    if size[0] * size[1] > limit:
        raise ConfigError(f"the canvas would be {size[0]}x{size[1]} px at the model's scale; accepted: at "
                          f"most {limit} px ({MAX_CANVAS_AREA} times the model's {resolution}x{resolution})")
    return size


def read_mask(mask: ImageLike | np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """A mask -> bool [H, W] at the image's size (W, H); True = replace."""
    if isinstance(mask, (Image.Image, str, os.PathLike)):
        im = load_rgb(mask, background=(0, 0, 0)) if not isinstance(mask, Image.Image) else \
            to_rgb(mask, background=(0, 0, 0))
        arr = np.asarray(im.convert("L")) >= MASK_THRESHOLD
    elif isinstance(mask, (np.ndarray, torch.Tensor)):
        arr = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)
        if arr.ndim != 2:
            raise ConfigError(f"mask array has shape {arr.shape}; accepted: 2-D [H, W]")
        arr = arr if arr.dtype == bool else arr >= (0.5 if arr.dtype.kind == "f" else MASK_THRESHOLD)
    else:
        raise ConfigError(f"mask is a {type(mask).__name__}; accepted: a PIL image, an image file, "
                          "or a 2-D bool/number array")
    if arr.shape != (size[1], size[0]):
        warnings.warn(f"mask is {arr.shape[1]}x{arr.shape[0]} but the image is {size[0]}x{size[1]}: "
                      "resizing the mask to the image (nearest)", stacklevel=3)
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.Resampling.NEAREST))
    return arr


def box_mask(box: Sequence[int], size: tuple[int, int]) -> np.ndarray:
    """(x0, y0, x1, y1) in image pixels, x1/y1 exclusive -> bool mask [H, W]."""
    w, h = size
    if len(box) != 4 or not all(isinstance(v, (int, np.integer)) for v in box):
        raise ConfigError(f"box is {box!r}; accepted: 4 integers x0, y0, x1, y1 (pixels)")
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ConfigError(f"box {tuple(box)} does not fit the {w}x{h} image; accepted: "
                          f"0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h}")
    arr = np.zeros((h, w), bool)
    arr[y0:y1, x0:x1] = True
    return arr


def token_mask(mask: np.ndarray, canvas: tuple[int, int], f: int, dilate: int = 0) -> torch.Tensor:
    """Pixel mask [H, W] -> bool [h, w] on a canvas of (W', H') px: tokens whose f x f patch
    touches the (resized) mask, grown by `dilate` tokens."""
    scaled = Image.fromarray(mask.astype(np.float32), "F").resize(canvas, Image.Resampling.BOX)
    t = torch.from_numpy(np.asarray(scaled) > 1e-6).float()[None, None]
    t = F.max_pool2d(t, f)
    if dilate:
        t = F.max_pool2d(t, 2 * dilate + 1, stride=1, padding=dilate)
    return t[0, 0] > 0


def paste_back(original: Image.Image, edited: Image.Image, mask: np.ndarray) -> Image.Image:
    """Original pixels outside the mask; inside, the edit, feathered towards the original at
    the mask's edge."""
    blur = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(FEATHER))
    a = (np.minimum(np.asarray(blur), mask * 255) / 255.0)[..., None]
    out = np.asarray(original, np.float32) * (1 - a) + np.asarray(edited, np.float32) * a
    return Image.fromarray(out.round().astype(np.uint8), "RGB")


def check_fraction(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"{name} is {value!r}; accepted: a number in [0, 1]")
    return float(value)


class EditingMixin:
    """Pipeline's editing methods. `sampler` keywords are the sampler options of generate
    (schedule, guidance_schedule, temperature, noise)."""

    @inference
    def inpaint(self: Pipeline, image: ImageLike, prompt: str, mask: ImageLike | np.ndarray | None = None,
                *, box: Sequence[int] | None = None, n: int = 1, dilate: int = 0, blend: bool = True,
                steps: int | None = None, guidance: float | None = None, seed: int = 0,
                **sampler) -> EditResult:
        """Re-generate the masked part of `image` (white in `mask`, or the `box`) from `prompt`."""
        img = open_image(image)
        if (mask is None) == (box is None):
            raise ConfigError("give exactly one of mask (an image or array, white = replace) and box")
        pixels = box_mask(box, img.size) if box is not None else read_mask(mask, img.size)
        if not isinstance(dilate, int) or dilate < 0:
            raise ConfigError(f"dilate is {dilate!r}; accepted: an integer >= 0 (tokens)")
        return self._fill_masked(img, pixels, img.size, prompt, n, dilate, blend, steps, guidance,
                                 seed, sampler, "the mask is empty: nothing to inpaint")

    @inference
    def outpaint(self: Pipeline, image: ImageLike, prompt: str, *, left: int = 0, right: int = 0,
                 top: int = 0, bottom: int = 0, n: int = 1, blend: bool = True, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, **sampler) -> EditResult:
        """Extend the canvas by the given pixels on each side and generate the new part."""
        img = open_image(image)
        pads = {"left": left, "right": right, "top": top, "bottom": bottom}
        for name, v in pads.items():
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} is {v!r}; accepted: an integer >= 0 (pixels to add)")
        w, h = img.size
        # the new area starts as the nearest edge pixels: the tokenizer sees a plausible border
        canvas = np.pad(np.asarray(img), ((top, bottom), (left, right), (0, 0)), mode="edge")
        pixels = np.ones(canvas.shape[:2], bool)
        pixels[top:top + h, left:left + w] = False
        return self._fill_masked(Image.fromarray(canvas), pixels, img.size, prompt, n, 0, blend, steps,
                                 guidance, seed, sampler, "left, right, top and bottom are all 0: "
                                 "nothing to outpaint")

    @inference
    def edit(self: Pipeline, image: ImageLike, prompt: str, strength: float = 0.3, iterations: int = 4, *,
             n: int = 1, steps: int | None = None, guidance: float | None = None, seed: int = 0,
             **sampler) -> EditResult:
        """Mask-free editing (Muse): `iterations` rounds, each re-masking the `strength` fraction
        of tokens least likely under `prompt` (token_logprob) and re-sampling them."""
        strength = check_fraction("strength", strength)
        if not isinstance(iterations, int) or iterations < 1:
            raise ConfigError(f"iterations is {iterations!r}; accepted: an integer >= 1")
        img, source = self._source(image)
        run = self.sampling(check_prompts(prompt), n, steps, guidance, seed, **sampler)
        x, changed = source.expand(n, -1, -1).clone(), torch.zeros(n, *source.shape, dtype=torch.bool,
                                                                     device=source.device)
        k = round(strength * source.numel())
        for _ in range(iterations if k else 0):
            score = self._confidence(run, x).view(n, -1)
            remask = (score.argsort(1).argsort(1) < k).view_as(x)
            x = run.fill(torch.where(remask, self.transformer.mask_id, x), _steps(run, strength))
            changed |= remask
        return EditResult(self._decode_to(x, img.size), x, source, changed, img)

    @inference
    def img2img(self: Pipeline, image: ImageLike, prompt: str, strength: float = 0.6, *, n: int = 1,
                steps: int | None = None, guidance: float | None = None, seed: int = 0,
                **sampler) -> EditResult:
        """Re-mask a random `strength` fraction of the image's tokens and re-sample them from
        `prompt` with ceil(strength * steps) steps: 0 returns the source, 1 generates anew."""
        return self._resample(image, check_prompts(prompt), strength, n, steps, guidance, seed, sampler)

    @inference
    def variations(self: Pipeline, image: ImageLike, n: int = 4, strength: float = 0.5,
                   prompt: str | None = None, *, steps: int | None = None, guidance: float | None = None,
                   seed: int = 0, **sampler) -> EditResult:
        """n img2img samples of one image; without a prompt they are unconditional (guidance off)."""
        if prompt is None:
            return self._resample(image, [""], strength, n, steps, 0.0, seed, sampler)
        return self._resample(image, check_prompts(prompt), strength, n, steps, guidance, seed, sampler)

    # -- shared steps ------------------------------------------------------------------------

    def _canvas(self: Pipeline, canvas: Image.Image, image_size: tuple[int, int]
                ) -> tuple[tuple[int, int], torch.Tensor]:
        """(scaled canvas size, its tokens [h, w]) under the size rule."""
        if self.family.makes_latents:
            raise ConfigError("inpainting, outpainting and editing need a masked token model; this is a "
                              "diffusion model (text-to-image only)")
        size = canvas_size(canvas.size, image_size, self.resolution, self.tokenizer.downsample)
        scaled = canvas.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return size, self.tokenizer.encode(to_tensor(scaled)[None])[0]

    def _source(self: Pipeline, image: ImageLike) -> tuple[Image.Image, torch.Tensor]:
        img = open_image(image)
        return img, self._canvas(img, img.size)[1]

    def _decode_to(self: Pipeline, tokens: torch.Tensor, size: tuple[int, int]) -> list[Image.Image]:
        return [im.resize(size, Image.Resampling.BICUBIC) for im in self.decode(tokens)]

    def _fill_masked(self: Pipeline, canvas: Image.Image, pixels: np.ndarray, image_size: tuple[int, int],
                     prompt: str, n: int, dilate: int, blend: bool, steps: int | None,
                     guidance: float | None, seed: int, sampler: dict, empty_note: str) -> EditResult:
        run = self.sampling(check_prompts(prompt), n, steps, guidance, seed, **sampler)
        size, source = self._canvas(canvas, image_size)
        where = token_mask(pixels, size, self.tokenizer.downsample, dilate).expand(n, -1, -1)
        if not pixels.any():
            warnings.warn(f"{empty_note}; returning the input", stacklevel=3)
            return EditResult([canvas.copy() for _ in range(n)], source.expand(n, -1, -1).clone(), source,
                              where.clone(), canvas)
        tokens = run.fill(torch.where(where, self.transformer.mask_id, source))
        images = self._decode_to(tokens, canvas.size)
        if blend:
            images = [paste_back(canvas, im, pixels) for im in images]
        return EditResult(images, tokens, source, where.clone(), canvas)

    def _resample(self: Pipeline, image: ImageLike, prompts: list[str], strength: float, n: int,
                  steps: int | None, guidance: float | None, seed: int, sampler: dict) -> EditResult:
        strength = check_fraction("strength", strength)
        img, source = self._source(image)
        run = self.sampling(prompts, n, steps, guidance, seed, **sampler)
        x = source.expand(n, -1, -1)
        k = round(strength * source.numel())
        ranks = random((n, source.numel()), run.generator, source.device).argsort(1).argsort(1)
        remask = (ranks < k).view_as(x)
        tokens = run.fill(torch.where(remask, self.transformer.mask_id, x), _steps(run, strength)) if k \
            else x.clone()
        return EditResult(self._decode_to(tokens, img.size), tokens, source, remask, img)

    def _confidence(self: Pipeline, run: SamplingRun, tokens: torch.Tensor) -> torch.Tensor:
        """token_logprob over a canvas of any size: each window scores its tokens, the lowest
        score across the windows covering a token wins."""
        ctx = guidance_context(run.cond, run.uncond, run.guidance)
        out = torch.full(tokens.shape, math.inf, device=tokens.device)
        for r, c in windows(tokens.shape[1], tokens.shape[2], self.transformer.config.grid):
            score = token_logprob(self.transformer, tokens[:, r, c], ctx, run.guidance or None, run.generator)
            out[:, r, c] = torch.minimum(out[:, r, c], score)
        return out


def _steps(run: SamplingRun, strength: float) -> int:
    """Re-sampling a fraction of the tokens takes that fraction of the steps (at least 1)."""
    return max(1, math.ceil(run.steps * strength))
