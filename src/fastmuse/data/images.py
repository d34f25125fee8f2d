"""Image helpers shared by every dataset: RGB loading, resize/crop, tensors, grids."""

from __future__ import annotations

import io
import os
import random
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ..errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Any PIL mode to RGB; transparency is composited on `background` (white by default)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def load_rgb(source: str | os.PathLike | bytes, background: tuple[int, int, int] = (255, 255, 255)
             ) -> Image.Image:
    """Open an image file (or encoded bytes) as RGB, transparency composited on `background`;
    a clear DataError if it cannot be read."""
    name = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            return to_rgb(im, background)
    except FileNotFoundError:
        raise DataError(f"image not found: {name}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"unreadable image {name}: {e}") from None


def resize_crop(
    image: Image.Image, size: int, crop: str = "center", rng: random.Random | None = None
) -> Image.Image:
    """Resize the shorter side to `size` (bicubic, antialiased), then crop a square.

    crop="center" is the evaluation rule; crop="random" (training) needs `rng`.
    """
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if crop == "center":
        x, y = (nw - size) // 2, (nh - size) // 2
    elif crop == "random":
        if rng is None:
            raise ValueError("crop='random' needs rng")
        x, y = rng.randint(0, nw - size), rng.randint(0, nh - size)
    else:
        raise DataError(f"crop is {crop!r}; accepted: 'center', 'random'")
    return image.crop((x, y, x + size, y + size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor [3, H, W] in [-1, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """Float tensor [3, H, W] in [-1, 1] -> RGB PIL image."""
    arr = ((tensor.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")


def make_grid(
    images: Sequence[Image.Image],
    ncols: int | None = None,
    captions: Sequence[str] | None = None,
    pad: int = 2,
) -> Image.Image:
    """Tile equal-size images into one picture, with an optional caption under each."""
    if not images:
        raise DataError("make_grid: no images")
    w, h = images[0].size
    n = len(images)
    ncols = ncols or max(1, round(n**0.5))
    nrows = (n + ncols - 1) // ncols
    font = ImageFont.load_default()
    max_chars = max(4, w // 6)
    label_h = 24 if captions else 0  # two lines of the default font
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        r, c = divmod(i, ncols)
        x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
        grid.paste(to_rgb(im).resize((w, h)), (x, y))
        if captions:
            lines = textwrap.wrap(captions[i], max_chars, max_lines=2, placeholder="…")
            draw.multiline_text((x + 1, y + h), "\n".join(lines), fill=(0, 0, 0), font=font,
                                spacing=1)
    return grid


def spread(total: int, n: int) -> list[int]:
    """Up to n indices spread evenly over range(total): previews show a set's variety."""
    k = min(n, total)
    return [round(j * (total - 1) / max(1, k - 1)) for j in range(k)]


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
