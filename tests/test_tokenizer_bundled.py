"""The bundled tokenizers load offline by name and reconstruct what they were trained on;
tokenizer-v2 gives the same content the same code wherever it lies."""

import pytest
import torch

from fastmuse.data.images import to_tensor
from fastmuse.data.shapes import render_scene, scene_at
from fastmuse.eval.image_metrics import psnr
from fastmuse.eval.tokenizer import flat_consistency
from fastmuse.hub import bundled_models
from fastmuse.tokenizer import VQTokenizer

NAMES = [n for n in ("tokenizer-f8", "tokenizer-v2") if n in bundled_models()]


@pytest.mark.parametrize("name", NAMES)
def test_loads_by_name_and_round_trips(name):
    tok = VQTokenizer.from_pretrained(name)
    assert tok.downsample == 8 and tok.codebook_size == 1024
    # held-out shapes scenes (a seed the tokenizer never saw)
    x = torch.stack([to_tensor(render_scene(scene_at(123, i, 128), 128)) for i in range(4)])
    with torch.no_grad():
        tokens = tok.encode(x)
        y = tok.decode(tokens)
    assert tokens.shape == (4, 16, 16)
    assert psnr(y, x).mean() > (30 if name == "tokenizer-v2" else 22)  # flat shapes on white


@pytest.mark.skipif("tokenizer-v2" not in bundled_models(), reason="tokenizer-v2 absent")
def test_v2_codes_depend_on_content_not_position():
    v2 = VQTokenizer.from_pretrained("tokenizer-v2")
    assert v2.config.padding == "replicate"
    assert flat_consistency(v2, sizes=(64, 128))["min_modal_share"] == 1.0
    # a scene moved by whole tokens keeps its codes away from the border (tokenizer-f8: 0.71)
    x = to_tensor(render_scene(scene_at(123, 5, 128), 128))[None]
    assert torch.equal(x[..., -16:, :], torch.ones_like(x[..., -16:, :]))  # the roll moves only white
    assert torch.equal(x[..., -8:], torch.ones_like(x[..., -8:]))
    with torch.no_grad():
        a, b = v2.encode(x)[0], v2.encode(torch.roll(x, (16, 8), (2, 3)))[0]
    assert (torch.roll(a, (2, 1), (0, 1))[3:-1, 2:-1] == b[3:-1, 2:-1]).float().mean() > 0.95
