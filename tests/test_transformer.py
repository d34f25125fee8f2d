"""The masked transformer: shapes, text context reuse and padding, save/load."""

import pytest
import torch

from fastmuse.errors import ConfigError
from fastmuse.models import ARTransformerConfig, MaskedTransformer, MaskedTransformerConfig, TextContext
from fastmuse.models.rope import apply_rope
from fastmuse.text import TextEmbedding

CFG = MaskedTransformerConfig(codebook_size=16, grid=4, dim=32, depth=2, heads=2, text_dim=8,
                              pooled_dim=6, resolution=16)


def text(b: int, length: int, seed: int = 0) -> TextEmbedding:
    g = torch.Generator().manual_seed(seed)
    return TextEmbedding(torch.randn(b, length, 8, generator=g), torch.randn(b, 6, generator=g),
                         torch.ones(b, length, dtype=torch.bool))


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = MaskedTransformer(CFG).eval()
    for p in m.parameters():  # leave adaLN-Zero's identity start: every path must matter
        torch.nn.init.normal_(p, std=0.1)
    return m


def test_logits_shape_and_mask_id(model):
    tokens = torch.full((3, 4, 4), model.mask_id)
    assert model.mask_id == 16
    assert model(tokens, text(3, 5)).shape == (3, 4, 4, 16)


def test_prepared_text_equals_direct(model):
    tokens = torch.randint(0, 17, (2, 4, 4))
    t = text(2, 5)
    torch.testing.assert_close(model(tokens, t), model(tokens, model.prepare_text(t)))


def test_text_padding_is_masked(model):
    tokens = torch.randint(0, 17, (1, 4, 4))
    short = text(1, 3)
    padded = TextEmbedding(torch.cat([short.hidden, torch.randn(1, 4, 8)], 1), short.pooled,
                           torch.tensor([[True] * 3 + [False] * 4]))
    torch.testing.assert_close(model(tokens, short), model(tokens, padded), atol=1e-5, rtol=1e-5)
    # and the conditional/unconditional stacking the sampler uses pads the same way
    both = TextContext.cat([model.prepare_text(short), model.prepare_text(text(1, 6, seed=1))])
    torch.testing.assert_close(model(tokens.repeat(2, 1, 1), both)[:1], model(tokens, short),
                               atol=1e-5, rtol=1e-5)


def test_text_changes_the_output(model):
    tokens = torch.randint(0, 17, (1, 4, 4))
    assert not torch.allclose(model(tokens, text(1, 5, 0)), model(tokens, text(1, 5, 1)))


def test_smaller_grid_and_bad_grid(model):
    assert model(torch.zeros(1, 2, 3, dtype=torch.long), text(1, 2)).shape == (1, 2, 3, 16)
    with pytest.raises(ConfigError, match="larger than"):
        model(torch.zeros(1, 5, 4, dtype=torch.long), text(1, 2))


def test_wrong_text_dims_named(model):
    bad = TextEmbedding(torch.randn(1, 2, 9), torch.randn(1, 6), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="text_dim"):
        model(torch.zeros(1, 4, 4, dtype=torch.long), bad)


def test_save_load_roundtrip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    back = MaskedTransformer.from_pretrained(tmp_path / "m")
    tokens = torch.randint(0, 17, (2, 4, 4))
    torch.testing.assert_close(back(tokens, text(2, 3)), model(tokens, text(2, 3)))


def test_rope_scores_depend_on_the_offset_only(model):
    """A query and a key placed at (r, c) and (r + dr, c + dc) score the same wherever that
    pair lies on the grid; rows and columns turn different channels."""
    m = MaskedTransformer(CFG.replace(grid=8, rope=True))
    cos, sin = m.rope(8, 8)  # [8*8, head_dim/2]
    q, k = torch.randn(16), torch.randn(16)

    def score(a, b):
        at = lambda v, rc: apply_rope(v[None], cos[rc[0] * 8 + rc[1]][None], sin[rc[0] * 8 + rc[1]][None])[0]  # noqa: E731
        return float(at(q, a) @ at(k, b))

    assert score((1, 2), (3, 5)) == pytest.approx(score((4, 0), (6, 3)), abs=1e-4)
    assert score((1, 2), (3, 5)) != pytest.approx(score((1, 2), (5, 3)), abs=1e-3)
    plain = MaskedTransformer(CFG)
    plain.load_state_dict(model.state_dict())  # rope adds no tensors
    with_rope = MaskedTransformer(CFG.replace(rope=True))
    with_rope.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 16, (2, 4, 4))
    with torch.no_grad():
        assert not torch.allclose(plain(tokens, text(2, 3)), with_rope(tokens, text(2, 3)))
    d = CFG.to_dict()
    del d["rope"]  # configs written before the key
    assert MaskedTransformerConfig.from_dict(d).rope is False


def test_local_mixing_reads_the_3x3_neighbourhood_and_starts_as_a_no_op(model):
    tokens = torch.randint(0, 16, (1, 4, 4))
    local = MaskedTransformer(CFG.replace(local=True)).eval()
    missing = local.load_state_dict(model.state_dict(), strict=False).missing_keys
    assert missing and all(".local." in k for k in missing)
    with torch.no_grad():  # zero-initialised: a warm start from a model without it is exact
        torch.testing.assert_close(local(tokens, text(1, 3)), model(tokens, text(1, 3)))
    one = MaskedTransformer(CFG.replace(local=True, depth=1)).eval()  # one block: one 3x3 hop
    with torch.no_grad():  # attention, cross-attention and MLP off: only the conv mixes positions
        for layer in (one.blocks[0].ada, one.blocks[0].proj_cross):
            layer.weight.zero_()
            layer.bias.zero_()
        torch.nn.init.normal_(one.blocks[0].local.weight)
        changed = tokens.clone()
        changed[0, 1, 1] = (tokens[0, 1, 1] + 1) % 16
        moved = (one(changed, text(1, 3)) - one(tokens, text(1, 3))).abs().sum(-1)[0] > 1e-6
    near = torch.zeros(4, 4, dtype=torch.bool)
    near[:3, :3] = True
    assert moved[near].all() and not moved[~near].any()
    with pytest.raises(ConfigError, match="local"):
        ARTransformerConfig(codebook_size=16, grid=4, dim=32, depth=1, heads=2, local=True)


def test_config_errors():
    with pytest.raises(ConfigError, match="heads"):
        MaskedTransformerConfig(dim=30, heads=4)
    with pytest.raises(ConfigError, match="head width"):
        MaskedTransformerConfig(dim=36, heads=6, rope=True)
    with pytest.raises(ConfigError, match="depth"):
        MaskedTransformerConfig(depth=0)
