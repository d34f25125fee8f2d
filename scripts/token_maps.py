"""docs/token-maps.png: what the tokenizers' codes look like, one colour per code id.

    python scripts/token_maps.py [--out docs/token-maps.png]

Rows: a flat white image at 64 and 128 px, flat red at 128 px, and two shapes scenes. Columns:
the input, then the token map of tokenizer-f8 (zero padding: a frame of border codes around
the same white) and of tokenizer-v2 (replicate padding: one code per flat colour, wherever
it lies). Each map's caption gives how many distinct codes it holds.
"""

from __future__ import annotations

import argparse
import random

import numpy as np
import torch
from PIL import Image

from fastmuse.data.images import make_grid, to_tensor
from fastmuse.data.shapes import BACKGROUND, PALETTE, render_scene, scene_at
from fastmuse.tokenizer import VQTokenizer

TOKENIZERS = ("tokenizer-f8", "tokenizer-v2")
SHOW = 128  # px per tile


def code_colours(n: int) -> np.ndarray:
    rng = random.Random(0)
    return np.array([[rng.randrange(40, 256) for _ in range(3)] for _ in range(n)], np.uint8)


def token_map(tokens: torch.Tensor, colours: np.ndarray) -> Image.Image:
    return Image.fromarray(colours[tokens.numpy()]).resize((SHOW, SHOW), Image.Resampling.NEAREST)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/token-maps.png")
    a = ap.parse_args()
    inputs = [("white, 64 px", Image.new("RGB", (64, 64), BACKGROUND)),
              ("white, 128 px", Image.new("RGB", (128, 128), BACKGROUND)),
              ("red, 128 px", Image.new("RGB", (128, 128), PALETTE["red"])),
              *((scene_at(123, i, 128).caption, render_scene(scene_at(123, i, 128), 128)) for i in (0, 5))]
    tokenizers = {name: VQTokenizer.from_pretrained(name) for name in TOKENIZERS}
    colours = code_colours(1024)
    tiles, captions = [], []
    for caption, image in inputs:
        tiles.append(image.resize((SHOW, SHOW), Image.Resampling.NEAREST))
        captions.append(caption)
        for name, tok in tokenizers.items():
            with torch.no_grad():
                tokens = tok.encode(to_tensor(image)[None])[0]
            tiles.append(token_map(tokens, colours))
            captions.append(f"{name}: {tokens.unique().numel()} codes")
    make_grid(tiles, ncols=1 + len(TOKENIZERS), captions=captions).save(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
