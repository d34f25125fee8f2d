"""The diffusion transformer (TrigFlow teacher): shapes, adaLN-Zero start, round trip, errors,
and that it learns a tiny text-conditioned set with the flow loss and samples it by ODE."""

import pytest
import torch

from fastmuse.errors import ConfigError
from fastmuse.models.dit import DiT, DiTConfig
from fastmuse.models.transformer import MaskedTransformer, MaskedTransformerConfig, deepen
from fastmuse.sampling.trigflow import SIGMA_D, flow_loss, ode_sample, sample_time
from fastmuse.text.encoders import TextEmbedding
from fastmuse.train.warm_start import warm_start


def tiny(**kw) -> DiT:
    torch.manual_seed(0)
    return DiT(DiTConfig(**{"grid": 16, "patch": 4, "channels": 3, "dim": 32, "depth": 2, "heads": 2,
                            "text_dim": 8, "pooled_dim": 8, **kw}))


def text(rows: torch.Tensor) -> TextEmbedding:
    """Two fixed 'captions' (0 and 1) as text embeddings."""
    table = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    return TextEmbedding(table[rows], table[rows].mean(1), torch.ones(len(rows), 3, dtype=torch.bool))


def test_shapes_zero_start_and_round_trip(tmp_path):
    model = tiny()
    x, t = torch.randn(3, 3, 16, 16), torch.rand(3)
    out = model(x, t, text(torch.tensor([0, 1, 0])))
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))  # adaLN-Zero + zero head
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    out = model(x, t, text(torch.tensor([0, 1, 0])))
    assert not torch.allclose(out[0], out[1])
    again = DiT.from_pretrained(model.save_pretrained(tmp_path / "dit"))
    assert torch.equal(again(x, t, text(torch.tensor([0, 1, 0]))), out)
    assert model(x[:, :, :8, :12], t, text(torch.tensor([0, 1, 0]))).shape == (3, 3, 8, 12)
    with pytest.raises(ConfigError, match="channels"):
        model(torch.randn(1, 1, 16, 16), t[:1], text(torch.tensor([0])))
    with pytest.raises(ConfigError, match="multiple of 'patch'"):
        DiTConfig(grid=18, patch=4)


def test_deepen_keeps_the_function_and_trains_the_new_blocks():
    model = tiny()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    deep = deepen(model, 6)
    assert deep.config.depth == 6 and len(deep.blocks) == 6
    x, t, c = torch.randn(3, 3, 16, 16), torch.rand(3), text(torch.tensor([0, 1, 0]))
    assert torch.allclose(deep(x, t, c), model(x, t, c), atol=1e-6)
    assert torch.equal(deep.blocks[3].qkv.weight, model.blocks[1].qkv.weight)  # block 1, copy 1
    deep(x, t, c).square().mean().backward()
    # the switched-off copies get gradients on what switches them on
    assert deep.blocks[1].ada.weight.grad[64:96].abs().sum() > 0
    assert deep.blocks[1].proj_cross.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="not a multiple"):
        deepen(model, 3)


def test_sincos_positions_are_fixed_distinct_and_unit_scale():
    model = tiny(pos_embed="sincos")
    assert not any("emb" in name for name, _ in model.named_parameters())  # nothing to learn
    pos = model.positions(4, 4, torch.device("cpu"))
    assert pos.shape == (16, 32) and len({tuple(p.tolist()) for p in pos}) == 16
    assert torch.allclose(pos.pow(2).sum(1), torch.full((16,), 16.0))  # cos^2 + sin^2 per pair
    assert torch.equal(model.positions(2, 3, torch.device("cpu")), pos.view(4, 4, 32)[:2, :3].reshape(6, 32))
    with pytest.raises(ConfigError, match="'pos_embed' is 'rope'; accepted: learned, sincos"):
        DiTConfig(pos_embed="rope")
    with pytest.raises(ConfigError, match="time_std"):
        DiTConfig(time_std=0)


def test_warm_start_from_a_masked_model(tmp_path):
    """A DiT with the masked model's extras (RoPE, text layers, caption positions) takes its
    blocks and text path from a masked model of the same size: the same text context, the
    time condition off at the start, and its own output head (another shape) kept fresh."""
    extras = {"rope": True, "text_layers": 1, "text_positions": 4, "caption_rule": "canonical_relations"}
    torch.manual_seed(1)
    masked = MaskedTransformer(MaskedTransformerConfig(codebook_size=16, grid=4, dim=32, depth=2, heads=2,
                                                       text_dim=8, pooled_dim=8, **extras))
    for p in masked.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model = tiny(**extras)
    summary = warm_start(model, str(masked.save_pretrained(tmp_path / "masked")))
    assert "head" in summary.split("new:")[1] and "blocks" not in summary.split("new:")[1]
    emb = text(torch.tensor([0, 1]))
    mine, theirs = model.prepare_text(emb), masked.prepare_text(emb)
    assert torch.equal(mine.c, theirs.c)
    assert all(torch.equal(a, b) for a, b in zip(mine.kv[0], theirs.kv[0], strict=True))
    x, t = torch.randn(2, 3, 16, 16), torch.rand(2)
    assert torch.equal(model.time(torch.randn(2, 32)), torch.zeros(2, 32))  # time starts switched off
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    with_rope = model(x, t, emb)
    model.config.rope = False
    assert not torch.allclose(model(x, t, emb), with_rope)
    with pytest.raises(ConfigError, match="caption_rule"):
        DiTConfig(caption_rule="shout")


def test_learns_two_captions_and_samples_them():
    """Caption 0 = a red image, caption 1 = a blue one: after flow-loss training the ODE
    sampler turns noise into the right colour for each caption."""
    model = tiny()
    colours = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        rows = torch.randint(2, (16,), generator=gen)
        x0 = SIGMA_D * colours[rows][:, :, None, None].expand(16, 3, 16, 16)
        ctx = model.prepare_text(text(rows))
        loss = flow_loss(lambda x, t, c=ctx: model.velocity(x, t, c), x0, sample_time(16, generator=gen),
                         SIGMA_D * torch.randn(x0.shape, generator=gen))
        opt.zero_grad()
        loss.backward()
        opt.step()
    rows = torch.tensor([0, 1, 0, 1])
    ctx = model.prepare_text(text(rows))
    z = SIGMA_D * torch.randn(4, 3, 16, 16, generator=gen)
    with torch.no_grad():
        x = ode_sample(lambda x, t: model.velocity(x, t, ctx), z, steps=8)
    mean = (x / SIGMA_D).mean((2, 3))
    assert torch.allclose(mean, colours[rows], atol=0.25), mean
