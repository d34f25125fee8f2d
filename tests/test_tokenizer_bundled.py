"""The bundled tokenizer loads offline by name and reconstructs what it was trained on."""

import pytest
import torch

from fastmuse.data.images import to_tensor
from fastmuse.data.shapes import render_scene, scene_at
from fastmuse.eval.image_metrics import psnr
from fastmuse.hub import bundled_models
from fastmuse.tokenizer import VQTokenizer

NAME = "tokenizer-f8"

pytestmark = pytest.mark.skipif(NAME not in bundled_models(), reason="bundled tokenizer absent")


def test_loads_by_name_and_round_trips():
    tok = VQTokenizer.from_pretrained(NAME)
    assert tok.downsample == 8 and tok.codebook_size == 1024
    # held-out shapes scenes (a seed the tokenizer never saw)
    x = torch.stack([to_tensor(render_scene(scene_at(123, i, 128), 128)) for i in range(4)])
    with torch.no_grad():
        tokens = tok.encode(x)
        y = tok.decode(tokens)
    assert tokens.shape == (4, 16, 16)
    assert psnr(y, x).mean() > 22  # flat shapes on white: well inside what it learned
