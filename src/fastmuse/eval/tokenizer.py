"""Tokenizer quality: PSNR, SSIM and codebook usage of reconstructions; round-trip images."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..data.folder import ImageFolder
from ..data.images import load_rgb, make_grid, resize_crop, spread, to_pil, to_tensor
from ..errors import DataError
from ..tokenizer.model import VQTokenizer
from .image_metrics import psnr, ssim


@torch.no_grad()
def evaluate_recon(model: VQTokenizer, images: torch.Tensor, batch_size: int = 16) -> dict[str, Any]:
    """PSNR, SSIM and codebook usage of reconstructions of `images` (in eval mode; the model
    may be on another device than the images). Returns the metrics and the reconstructions
    under "recon"."""
    was_training = model.training
    model.eval()
    recons, ids, device = [], [], next(model.parameters()).device
    for chunk in images.split(batch_size):
        t = model.encode(chunk.to(device))
        ids.append(t.to(images.device))
        recons.append(model.decode(t).clamp(-1, 1).to(images.device))
    model.train(was_training)
    recon = torch.cat(recons)
    grid = torch.cat(ids)  # [N, h, w]
    counts = torch.bincount(grid.flatten(), minlength=model.codebook_size)
    used = int((counts > 0).sum())
    bits = code_entropy_bits(counts)
    return {"psnr": psnr(recon, images).mean().item(), "ssim": ssim(recon, images).mean().item(),
            "codebook_usage": used / model.codebook_size, "codes_used": used,
            "code_entropy_bits": bits, "code_perplexity": 2.0 ** bits,
            "flat_patch_modal_share": flat_patch_share(images, grid, model.downsample),
            "images": len(images), "recon": recon}


def flat_patch_share(images: torch.Tensor, tokens: torch.Tensor, f: int,
                     min_patches: int = 20) -> float | None:
    """Same content, same code, inside real images: the token patches (f x f px) that are one
    flat colour are grouped by colour; each group's share of patches holding its modal code,
    averaged over patches (colours with at least `min_patches` patches; None if none). The
    encoder sees past its patch, so context (nearby objects, the image's statistics) can
    still change a flat patch's code; 1.0 means it never does."""
    p = images.unfold(2, f, f).unfold(3, f, f)  # [B, 3, h, w, f, f]
    flat = (p.amax((-1, -2)) - p.amin((-1, -2))).amax(1) < 2 / 255
    colour = ((p[..., 0, 0] + 1) * 127.5).round().long().permute(0, 2, 3, 1)[flat]  # [N, 3]
    key = (colour[:, 0] * 256 + colour[:, 1]) * 256 + colour[:, 2]
    codes = tokens[flat]
    held, total = 0, 0
    for k in key.unique():
        group = codes[key == k]
        if len(group) >= min_patches:
            held += int((group == group.mode().values).sum())
            total += len(group)
    return held / total if total else None


def code_entropy_bits(counts: torch.Tensor) -> float:
    """Entropy in bits of the code distribution given by per-code counts. Its power of two,
    the perplexity, is how many equally likely codes a transformer effectively chooses from."""
    p = counts[counts > 0].double() / counts.sum()
    return float(-(p * p.log2()).sum())


FLAT_SIZES = (64, 128, 256)


@torch.no_grad()
def flat_consistency(model: VQTokenizer, sizes: tuple[int, ...] = FLAT_SIZES) -> dict[str, Any]:
    """Same content, same token: for flat images of white and each shapes-world palette
    colour at each size, the share of token positions that hold the image's modal code.
    1.0 means a flat area encodes to one code wherever it lies; less means the encoder's
    border (padding) gives edge positions codes of their own."""
    from ..data.shapes import BACKGROUND, PALETTE

    colours = {"white": BACKGROUND, **PALETTE}
    rgb = torch.tensor(list(colours.values()), dtype=torch.float32) / 127.5 - 1
    was_training = model.training
    model.eval()
    by_size = {}
    for size in sizes:
        check_resolution(model, size)
        ids = model.encode(rgb[:, :, None, None].expand(-1, -1, size, size).contiguous()).flatten(1)
        share = [float((row == row.mode().values).float().mean()) for row in ids]
        by_size[str(size)] = dict(zip(colours, share, strict=True))
    model.train(was_training)
    return {"min_modal_share": min(v for row in by_size.values() for v in row.values()),
            "modal_share": by_size}


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


@torch.no_grad()
def export_tokenizer(source: str | Path, out: str | Path, images: torch.Tensor, dtype: str = "fp32",
                     card: str | None = None, flat_snap: float | None = None) -> dict[str, Any]:
    """Write tokenizer `source` to the folder `out` with its floating tensors stored as `dtype`
    (they are upcast at load), a reconstruction grid and an optional card (README.md);
    `flat_snap` (not None) replaces the config's. Returns what the copy changes, measured on
    `images`: the share of tokens that stay the same and the PSNR next to the original's."""
    from ..hub import save_checkpoint, stored

    model = VQTokenizer.from_pretrained(source)
    state = stored(model.state_dict(), dtype)
    config = model.config if flat_snap is None else model.config.replace(flat_snap=flat_snap)
    copy = VQTokenizer(config)
    copy.load_state_dict(state)
    copy.eval()
    same = torch.cat([(model.encode(c) == copy.encode(c)).flatten() for c in images.split(16)])
    before, after = evaluate_recon(model, images), evaluate_recon(copy, images)
    grid = io.BytesIO()
    recon_grid(images, after.pop("recon")).save(grid, format="PNG")
    extra = {"recon.png": grid.getvalue(), **({"README.md": card.encode()} if card else {})}
    save_checkpoint(out, config, {"model": state}, extra)
    return {"dtype": dtype, "tokens_unchanged": float(same.float().mean()),
            "psnr": before["psnr"], "psnr_stored": after["psnr"], "ssim_stored": after["ssim"]}
