"""Parity: a diffusers VQModel folder loads into our tokenizer and computes the same numbers."""

import json

import pytest
import torch

from fastmuse.errors import CheckpointError
from fastmuse.tokenizer import VQTokenizer

diffusers = pytest.importorskip("diffusers")


def tiny_vqmodel(attention: bool) -> "diffusers.VQModel":
    torch.manual_seed(0)
    m = diffusers.VQModel(
        block_out_channels=(16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=8,
        num_vq_embeddings=32, norm_num_groups=8, mid_block_add_attention=attention,
        lookup_from_codebook=True,
    )
    with torch.no_grad():  # move every weight off its init so that norms and biases matter
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("attention", [True, False])
def test_encode_decode_match_diffusers(tmp_path, attention):
    ref = tiny_vqmodel(attention)
    ref.save_pretrained(tmp_path / "vqvae")
    ours = VQTokenizer.from_pretrained(tmp_path / "vqvae")
    assert ours.downsample == 4 and ours.codebook_size == 32
    assert ours.config.pixel_range == "0..1"

    images01 = torch.rand(2, 3, 32, 32)  # aMUSEd feeds the VQ-GAN [0, 1] images
    with torch.no_grad():
        ref_latents = ref.encode(images01).latents
        ref_tokens = ref.quantize(ref_latents)[2][2].reshape(2, 8, 8)
        tokens = ours.encode(images01 * 2 - 1)
        assert torch.allclose(ours.encode_latents(images01 * 2 - 1), ref_latents, atol=1e-4)
        assert torch.equal(tokens, ref_tokens)

        ids = torch.randint(0, 32, (2, 8, 8))
        ref_img = ref.decode(ids, force_not_quantize=True, shape=(2, 8, 8, 8)).sample
        img = ours.decode(ids)
    assert torch.allclose((img + 1) / 2, ref_img, atol=1e-4)


def test_refuses_pickled_diffusers_weights(tmp_path):
    ref = tiny_vqmodel(False)
    ref.save_pretrained(tmp_path / "vq", safe_serialization=False)
    with pytest.raises(CheckpointError, match="refusing to load pickle"):
        VQTokenizer.from_pretrained(tmp_path / "vq")


def test_unsupported_diffusers_config(tmp_path):
    ref = tiny_vqmodel(False)
    ref.save_pretrained(tmp_path / "vq")
    cfg = json.loads((tmp_path / "vq/config.json").read_text())
    cfg["norm_type"] = "spatial"
    (tmp_path / "vq/config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="norm_type='spatial' is not supported"):
        VQTokenizer.from_pretrained(tmp_path / "vq")
