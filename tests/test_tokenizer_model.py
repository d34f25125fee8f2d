import pytest
import torch

from fastmuse.errors import CheckpointError, ConfigError
from fastmuse.hub import save_checkpoint
from fastmuse.tokenizer import VQConfig, VQTokenizer
from fastmuse.tokenizer.quantizer import VectorQuantizer


def tiny(levels: int = 3, **kw) -> VQTokenizer:
    torch.manual_seed(0)
    cfg = VQConfig(block_out_channels=(8, 16, 16, 16, 16)[:levels], norm_num_groups=8,
                   latent_channels=4, vq_embed_dim=4, num_vq_embeddings=32, **kw)
    return VQTokenizer(cfg).eval()


@pytest.mark.parametrize("levels, f", [(3, 4), (4, 8), (5, 16)])
def test_shapes_and_downsampling(levels, f):
    m = tiny(levels)
    assert m.downsample == f and m.codebook_size == 32
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        t = m.encode(x)
        assert t.shape == (2, 32 // f, 32 // f) and t.dtype == torch.long
        assert 0 <= int(t.min()) and int(t.max()) < 32
        y = m.decode(t)
    assert y.shape == x.shape
    assert torch.equal(m.decode(t), y)  # deterministic


def test_decode_latents_equals_decode_of_lookup():
    m = tiny()
    t = torch.randint(0, 32, (1, 8, 8))
    with torch.no_grad():
        assert torch.equal(m.decode(t), m.decode_latents(m.quantize.lookup(t)))


def test_bad_inputs():
    m = tiny()
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 31\]"):
        m.decode(torch.full((1, 4, 4), 32))
    with pytest.raises(ValueError, match="token ids must lie"):
        m.decode(torch.full((1, 4, 4), -1))
    with pytest.raises(TypeError, match="integer tensor"):
        m.decode(torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="multiples of 4"):
        m.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        m.encode(torch.zeros(3, 32, 32))


def test_config_validation():
    with pytest.raises(ConfigError, match="norm_num_groups"):
        VQConfig(block_out_channels=(24, 32), norm_num_groups=16)
    with pytest.raises(ConfigError, match="quantizer"):
        VQConfig.from_dict({**VQConfig().to_dict(), "quantizer": "gumbel"})


def test_save_load_round_trip(tmp_path):
    m = tiny(quantizer="ema")
    m.save_pretrained(tmp_path / "tok")
    back = VQTokenizer.from_pretrained(tmp_path / "tok")
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(m.encode(x), back.encode(x))
        assert torch.equal(m.decode(m.encode(x)), back.decode(back.encode(x)))


def test_mismatched_config_is_clear(tmp_path):
    small, big = tiny(3), tiny(4)
    save_checkpoint(tmp_path / "tok", small.config, {"model": big.state_dict()})
    with pytest.raises(CheckpointError, match="do not match the config"):
        VQTokenizer.from_pretrained(tmp_path / "tok")


def test_straight_through_loss_and_gradient():
    q = VectorQuantizer(8, 2, mode="st", beta=0.25)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    zq, loss, ids = q(z)
    codes = q.lookup(ids)
    assert torch.allclose(zq, codes)  # forward value is the code
    assert torch.allclose(loss, 1.25 * (codes - z).pow(2).mean())
    zq.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through


def test_ema_moves_codes_to_their_means():
    torch.manual_seed(0)
    q = VectorQuantizer(2, 2, mode="ema", decay=0.5).train()
    q.embedding.weight.data = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    q.ema_sum.copy_(q.embedding.weight.data)
    z = torch.tensor([[1.0, 1.0], [9.0, 9.0]]).t().reshape(1, 2, 2, 1)  # two 2-d vectors
    for _ in range(20):
        q(z)
    assert torch.allclose(q.embedding.weight, torch.tensor([[1.0, 1.0], [9.0, 9.0]]), atol=1e-3)
    assert not q.embedding.weight.requires_grad


def test_dead_codes_restart_on_encoder_outputs():
    q = VectorQuantizer(4, 2, mode="st").train()
    z = torch.randn(1, 2, 4, 4)
    usage = torch.tensor([5.0, 0.0, 1.0, 0.0])
    n = q.restart_dead(z, usage, torch.Generator().manual_seed(0))
    assert n == 2
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in q.embedding.weight[[1, 3]]:
        assert (flat - code).abs().sum(1).min() < 1e-6


def test_l2_normalised_codes():
    q = VectorQuantizer(16, 4, mode="st", l2_normalize=True)
    zq, _, ids = q(torch.randn(2, 4, 3, 3) * 5)
    assert torch.allclose(zq.norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)
    assert torch.allclose(q.lookup(ids).norm(dim=1), torch.ones(2, 3, 3), atol=1e-5)


def flat(rgb: tuple[float, float, float], size: int) -> torch.Tensor:
    return torch.tensor(rgb).view(1, 3, 1, 1).expand(1, 3, size, size).contiguous()


def test_replicate_padding_encodes_a_flat_image_to_one_code_everywhere():
    from fastmuse.eval.tokenizer import flat_consistency

    m = tiny(4, padding="replicate")
    with torch.no_grad():
        for rgb in [(1.0, 1.0, 1.0), (0.7, -0.8, -0.8), (-0.8, -0.4, 0.8)]:
            for size in (16, 64):
                t = m.encode(flat(rgb, size))
                assert (t == t[0, 0, 0]).all(), (rgb, size)
                y = m.decode(t)
                assert torch.allclose(y, y[:, :, :1, :1].expand_as(y), atol=1e-5)  # flat out too
    assert flat_consistency(m, sizes=(16, 32, 64))["min_modal_share"] == 1.0
    # the same weights with zero padding give the border tokens codes of their own
    z = tiny(4, padding="zeros")
    z.load_state_dict(m.state_dict())
    assert flat_consistency(z, sizes=(16, 32, 64))["min_modal_share"] < 1.0


def test_padding_is_a_later_key_and_checked():
    d = VQConfig().to_dict()
    assert d["padding"] == "zeros"
    del d["padding"]  # folders written before the key existed
    assert VQConfig.from_dict(d).padding == "zeros"
    with pytest.raises(ConfigError, match="padding': 'reflect' is not one of 'zeros', 'replicate'"):
        VQConfig.from_dict({**d, "padding": "reflect"})
    with pytest.raises(ConfigError, match="unknown key 'padding_mode'"):
        VQConfig.from_dict({**d, "padding_mode": "zeros"})


def test_flat_snap_gives_flat_patches_their_colours_code_wherever_they_lie():
    m = tiny(4, padding="replicate", flat_snap=0.02)
    x = torch.rand(2, 3, 32, 32) * 2 - 1  # noise: no flat patch
    x[0, :, 8:16, 0:8] = torch.tensor([1.0, 1.0, 1.0])[:, None, None]  # white, at two places
    x[1, :, 24:32, 16:24] = torch.tensor([1.0, 1.0, 1.0])[:, None, None]
    x[1, :, 0:8, 0:8] = torch.tensor([-0.5, 0.2, 0.9])[:, None, None]
    with torch.no_grad():
        t = m.encode(x)
        plain = m.quantize.indices(m.encode_latents(x))
        white = m.encode(flat((1.0, 1.0, 1.0), 8))[0, 0, 0]
        blue = m.encode(flat((-0.5, 0.2, 0.9), 8))[0, 0, 0]
    assert t[0, 1, 0] == white and t[1, 3, 2] == white and t[1, 0, 0] == blue
    others = torch.ones_like(t, dtype=torch.bool)
    others[0, 1, 0] = others[1, 3, 2] = others[1, 0, 0] = False
    assert torch.equal(t[others], plain[others])  # patches that are not flat keep their codes
    m.train()
    recon, _, ids = m(x)  # the decoder trains on the snapped codes
    assert recon.shape == x.shape and torch.equal(ids, t)
    assert VQConfig.from_dict({k: v for k, v in VQConfig().to_dict().items()
                               if k != "flat_snap"}).flat_snap == 0.0  # folders from before the key


def test_code_entropy_bits():
    from fastmuse.eval.tokenizer import code_entropy_bits

    assert code_entropy_bits(torch.tensor([5, 5, 5, 5, 0])) == pytest.approx(2.0)
    assert code_entropy_bits(torch.tensor([0, 9, 0])) == 0.0


def test_flat_patch_share_counts_codes_per_flat_colour():
    from fastmuse.eval.tokenizer import flat_patch_share

    images = torch.ones(2, 3, 16, 16)
    images[:, :, 8:, :] = -1.0  # bottom half black: 8 white and 8 black 4x4 patches per image
    tokens = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 2], [5, 5, 5, 5], [5, 5, 5, 5]]] * 2)
    assert flat_patch_share(images, tokens, 4, min_patches=1) == pytest.approx(30 / 32)
    assert flat_patch_share(images, tokens, 4, min_patches=100) is None


def test_export_stores_fp16_and_can_set_flat_snap(tmp_path):
    from fastmuse.eval.tokenizer import export_tokenizer
    from helpers import tiny_tokenizer

    src = tiny_tokenizer(tmp_path / "src")
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    images[:, :, :8, :8] = 1.0  # a flat white corner: 16 f2 patches
    plain = export_tokenizer(src, tmp_path / "fp16", images, "fp16")
    snapped = export_tokenizer(src, tmp_path / "snap", images, "fp32", flat_snap=0.02)
    a, b = VQTokenizer.from_pretrained(tmp_path / "fp16"), VQTokenizer.from_pretrained(tmp_path / "snap")
    assert a.config.flat_snap == 0.0 and b.config.flat_snap == 0.02
    assert plain["tokens_unchanged"] > 0.9 and (tmp_path / "fp16" / "recon.png").is_file()
    with torch.no_grad():
        corner = b.encode(images)[:, :4, :4]
    assert (corner == corner[0, 0, 0]).all() and snapped["tokens_unchanged"] < 1.0
