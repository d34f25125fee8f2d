"""Tokenizer quality: PSNR, SSIM and codebook usage of reconstructions; round-trip images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.folder import ImageFolder
from ..data.images import load_rgb, make_grid, resize_crop, spread, to_pil, to_tensor
from ..errors import DataError
from ..eval.image_metrics import psnr, ssim
from .model import VQTokenizer


@torch.no_grad()
def evaluate_recon(model: VQTokenizer, images: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """PSNR, SSIM and codebook usage of reconstructions of `images` (in eval mode).
    Returns the metrics and the reconstructions under "recon"."""
    was_training = model.training
    model.eval()
    recons, ids = [], []
    for chunk in images.split(batch_size):
        t = model.encode(chunk)
        ids.append(t.flatten())
        recons.append(model.decode(t).clamp(-1, 1))
    model.train(was_training)
    recon = torch.cat(recons)
    used = torch.unique(torch.cat(ids)).numel()
    return {"psnr": psnr(recon, images).mean().item(), "ssim": ssim(recon, images).mean().item(),
            "codebook_usage": used / model.codebook_size, "codes_used": used,
            "images": len(images), "recon": recon}


def recon_grid(images: torch.Tensor, recon: torch.Tensor, n: int = 16) -> Image.Image:
    """Rows of 8 originals (n spread over `images`), each followed by their reconstructions."""
    picks = spread(len(images), n)
    tiles = []
    for row in range(0, len(picks), 8):
        tiles += [to_pil(images[i]) for i in picks[row:row + 8]]
        tiles += [to_pil(recon[i]) for i in picks[row:row + 8]]
    return make_grid(tiles, ncols=min(8, len(picks)))


def load_val_images(folder: str | Path, resolution: int, n: int | None = None,
                    split: str | None = "val") -> torch.Tensor:
    """Up to n images spread over a folder dataset's split (all of them if n is None),
    center-cropped to `resolution`."""
    ds = ImageFolder(folder, resolution, split=split)
    picks = range(len(ds)) if n is None else spread(len(ds), n)
    return torch.stack([ds[i]["image"] for i in picks])


def check_resolution(model: VQTokenizer, resolution: int) -> None:
    if resolution % model.downsample:
        raise DataError(f"resolution is {resolution}; accepted: a multiple of the tokenizer's "
                        f"downsampling {model.downsample}")


@torch.no_grad()
def reconstruct(model: VQTokenizer, image: Image.Image | str | Path, resolution: int) -> Image.Image:
    """Round trip one image: RGB on white, shorter side to `resolution`, center crop,
    encode, decode."""
    check_resolution(model, resolution)
    if not isinstance(image, Image.Image):
        image = load_rgb(image)
    x = to_tensor(resize_crop(image, resolution)).unsqueeze(0)
    return to_pil(model.decode(model.encode(x))[0])
