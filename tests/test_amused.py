"""aMUSEd and Meissonic folders: tiny random checkpoints built and saved by diffusers/transformers
themselves, loaded into our modules; logits, sampling, conversion and errors checked against
the reference."""

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, CLIPTextModelWithProjection

from fastmuse.convert import convert_public, export_amused
from fastmuse.errors import CheckpointError
from fastmuse.models import MMDiT, MMDiTConfig
from fastmuse.models.from_diffusers import load_diffusers_transformer
from fastmuse.pipeline import Pipeline
from fastmuse.text.encoders import TextEmbedding
from helpers import tiny_pipeline, tiny_text_encoder
from test_tokenizer_diffusers import tiny_vqmodel

diffusers = pytest.importorskip("diffusers")

CODES, VOCAB = 32, 40  # MASK = 39, as aMUSEd's vocab_size - 1


def tiny_uvit(downsample: bool = False, use_bias: bool = False, text_dim: int = 32, pooled_dim: int = 24,
              sample_size: int = 8) -> "diffusers.UVit2DModel":
    torch.manual_seed(1)
    m = diffusers.UVit2DModel(
        hidden_size=32, use_bias=use_bias, cond_embed_dim=pooled_dim, micro_cond_encode_dim=4,
        micro_cond_embed_dim=20, encoder_hidden_size=text_dim, vocab_size=VOCAB, codebook_size=CODES,
        in_channels=12, block_out_channels=16, num_res_blocks=2, downsample=downsample, upsample=downsample,
        block_num_heads=2, num_hidden_layers=2, num_attention_heads=4, intermediate_size=40,
        sample_size=sample_size)
    with torch.no_grad():  # off the init (GRN starts at zero, norms at one): every weight matters
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m.eval()


@pytest.mark.parametrize("downsample,use_bias", [(False, False), (True, True)])
def test_logits_match_diffusers(tmp_path, downsample, use_bias):
    ref = tiny_uvit(downsample, use_bias)
    ref.save_pretrained(tmp_path)
    ours = load_diffusers_transformer(tmp_path, downsampling=4)
    assert ours.config.grid == 8 and ours.mask_id == VOCAB - 1 and ours.config.resolution == 32
    ids = torch.randint(0, CODES, (3, 8, 8))
    ids[:, :3] = ours.mask_id
    text = TextEmbedding(torch.randn(3, 7, 32), torch.randn(3, 24), torch.ones(3, 7, dtype=torch.bool))
    micro = torch.tensor([[32.0, 32, 0, 0, 6], [32, 32, 0, 0, 6], [512, 384, 10, 3, 5]])
    with torch.no_grad():
        want = ref(ids, text.hidden, text.pooled, micro)
        got = ours(ids, ours.prepare_text(text, micro)).permute(0, 3, 1, 2)
        other = ours(ids, ours.prepare_text(text, torch.tensor([64.0, 64, 8, 8, 2])))
    assert got.shape == want.shape == (3, CODES, 8, 8)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert not torch.allclose(other.permute(0, 3, 1, 2), want, atol=1e-3)  # micro-conditions count


def amused_folder(root):
    """A tiny aMUSEd pipeline saved by diffusers: CLIP text + U-ViT + VQ-GAN + scheduler."""


    text_dir = tiny_text_encoder(root / "src_text", "clip")
    pipe = diffusers.AmusedPipeline(
        vqvae=tiny_vqmodel(False), tokenizer=AutoTokenizer.from_pretrained(text_dir),
        text_encoder=CLIPTextModelWithProjection.from_pretrained(text_dir), transformer=tiny_uvit(),
        scheduler=diffusers.AmusedScheduler(mask_token_id=VOCAB - 1))
    pipe.save_pretrained(root / "amused")
    return pipe, root / "amused"


def test_pipeline_tokens_match_amused_pipeline(tmp_path, monkeypatch):
    """Same tokens as AmusedPipeline under its defaults mapped to ours (guidance g -> g - 1,
    temperature (2, 0) -> noise 2N/(N-1)). The random draws differ by design (ours: Gumbel-max
    from per-request streams, so batched = solo in the server; theirs: multinomial from one
    generator), so both get the same draws here: token choice = argmax, confidence noise =
    one fixed Gumbel tensor per step. Step counts where 64 x cos(schedule) is an integer
    (12 and 6 steps: 64 x cos(pi/3) = 32) are avoided: diffusers computes the schedule in
    float32 and keeps 31 tokens masked there, we compute it in float64 and keep 32."""
    import diffusers.schedulers.scheduling_amused as amused_sched

    import fastmuse.sampling.maskgit as maskgit

    ref, folder = amused_folder(tmp_path)
    pipe = Pipeline.from_pretrained(folder)
    assert pipe.resolution == 32 and pipe.defaults.guidance == 9.0

    def fixed_gumbel():
        calls = iter(range(100))
        return lambda shape: -torch.log(-torch.log(torch.rand(shape, generator=torch.Generator()
                                                              .manual_seed(next(calls))).clamp(1e-20)))

    theirs, ours = fixed_gumbel(), fixed_gumbel()
    monkeypatch.setattr(amused_sched, "gumbel_noise", lambda t, generator=None: theirs(t.shape))
    monkeypatch.setattr(torch, "multinomial", lambda p, n, generator=None: p.argmax(-1, keepdim=True))
    monkeypatch.setattr(maskgit, "gumbel", lambda shape, gen, dev: ours(shape) if len(shape) == 2
                        else torch.zeros(shape))
    for steps, g in ((10, 10.0), (5, 4.0)):
        with torch.no_grad():
            want = ref("red heart", num_inference_steps=steps, guidance_scale=g, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images
        got = pipe.generate_tokens("red heart", steps=steps, guidance=g - 1, noise=2 * steps / (steps - 1))
        assert torch.equal(got, want.long())
        theirs, ours = fixed_gumbel(), fixed_gumbel()


def test_pipeline_generates_and_inpaints(tmp_path):
    _, folder = amused_folder(tmp_path)
    pipe = Pipeline.from_pretrained(folder)
    images = pipe("red heart", n=2, seed=0)
    assert len(images) == 2 and images[0].size == (32, 32)
    assert pipe("red heart", n=2, seed=0)[1].tobytes() == images[1].tobytes()
    res = pipe.inpaint(images[0], "blue square", box=(0, 0, 16, 16), seed=1)
    assert res.images[0].size == (32, 32) and bool(res.mask.any()) and not bool(res.mask.all())


def test_folder_errors(tmp_path):
    _, folder = amused_folder(tmp_path)

    shutil.rmtree(folder / "vqvae")
    with pytest.raises(CheckpointError, match="vqvae/ is missing"):
        Pipeline.from_pretrained(folder)

    ref = tiny_uvit()
    ref.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(CheckpointError, match="refusing to load pickle.*weights_only=True"):
        load_diffusers_transformer(tmp_path / "pickled")

    ref.save_pretrained(tmp_path / "odd")
    cfg = json.loads((tmp_path / "odd/config.json").read_text())
    (tmp_path / "odd/config.json").write_text(json.dumps({**cfg, "qk_norm": True}))
    with pytest.raises(CheckpointError, match="'qk_norm' is not one fastmuse knows"):
        load_diffusers_transformer(tmp_path / "odd")
    (tmp_path / "odd/config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="_class_name is 'UNet2DModel'; accepted: 'UVit2DModel'"):
        load_diffusers_transformer(tmp_path / "odd")

    tiny_uvit(text_dim=16).save_pretrained(tmp_path / "narrow")
    narrow = load_diffusers_transformer(tmp_path / "narrow", downsampling=4)
    with pytest.raises(Exception, match="encoder_hidden_size 16"):
        narrow.prepare_text(TextEmbedding(torch.randn(1, 5, 32), torch.randn(1, 24), torch.ones(1, 5).bool()))


def test_convert_export_round_trip(tmp_path):
    """aMUSEd folder -> fastmuse folder -> aMUSEd folder: diffusers loads the result and computes
    the same logits and images; the converted folder generates what the source does."""

    ref, folder = amused_folder(tmp_path)
    (folder / "tokenizer" / "tokenizer.json").unlink()  # as aMUSEd's own folders: the slow files only
    convert_public(folder, tmp_path / "ours")
    assert type(Pipeline.from_pretrained(tmp_path / "ours").text_encoder.model).__module__ == \
        "fastmuse.text.native"  # convert wrote a tokenizer.json
    assert Pipeline.from_pretrained(tmp_path / "ours")("red heart", seed=3)[0].tobytes() == \
        Pipeline.from_pretrained(folder)("red heart", seed=3)[0].tobytes()
    export_amused(tmp_path / "ours", tmp_path / "back")
    back = diffusers.AmusedPipeline.from_pretrained(tmp_path / "back")
    ids = torch.randint(0, VOCAB, (2, 8, 8))
    inputs = (ids, torch.randn(2, 32, 32), torch.randn(2, 24), torch.tensor([[32.0, 32, 0, 0, 6]] * 2))
    with torch.no_grad():
        assert torch.equal(back.transformer(*inputs), ref.transformer(*inputs))
        codes = torch.randint(0, CODES, (1, 8, 8))
        args = dict(force_not_quantize=True, shape=(1, 8, 8, 8))
        assert torch.equal(back.vqvae.decode(codes, **args).sample, ref.vqvae.decode(codes, **args).sample)
        want = ref("pizza", generator=torch.Generator().manual_seed(0), output_type="np").images
        got = back("pizza", generator=torch.Generator().manual_seed(0), output_type="np").images
    assert (want == got).all()


def test_export_refuses_other_models(tmp_path):
    with pytest.raises(CheckpointError, match="hold a U-ViT transformer"):
        export_amused(tiny_pipeline(tmp_path / "tiny"), tmp_path / "out")


def test_meissonic_folder_generates_and_converts(tmp_path):
    """A Meissonic-layout folder (transformer/ Transformer2DModel, vqvae/, text_encoder/,
    tokenizer/) runs through the same Pipeline entry point, with Meissonic's defaults."""

    text_dir = tiny_text_encoder(tmp_path / "text", "clip")  # hidden 32, pooled 24
    folder = tmp_path / "meissonic"
    tiny_vqmodel(False).save_pretrained(folder / "vqvae")  # f4, 32 codes
    cfg = MMDiTConfig(num_layers=1, num_single_layers=2, attention_head_dim=12, num_attention_heads=2,
                      joint_attention_dim=32, pooled_projection_dim=24, axes_dims_rope=(4, 4, 4),
                      vocab_size=VOCAB, codebook_size=CODES, sample_size=8)
    torch.manual_seed(0)
    model = MMDiT(cfg)
    (folder / "transformer").mkdir()
    keys = ("patch_size", "in_channels", "num_layers", "num_single_layers", "attention_head_dim",
            "num_attention_heads", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
            "axes_dims_rope", "vocab_size", "codebook_size", "downsample", "upsample", "sample_size")
    (folder / "transformer/config.json").write_text(json.dumps(
        {"_class_name": "Transformer2DModel", **{k: getattr(cfg, k) for k in keys}}))
    save_file(model.state_dict(), str(folder / "transformer/diffusion_pytorch_model.safetensors"))
    shutil.copytree(text_dir, folder / "text_encoder")
    pipe = Pipeline.from_pretrained(folder)
    assert isinstance(pipe.transformer, MMDiT) and pipe.resolution == 32
    assert (pipe.defaults.steps, pipe.defaults.guidance) == (48, 8.0)
    images = pipe("red heart", n=2, steps=4, seed=0)
    assert len(images) == 2 and images[0].size == (32, 32)
    convert_public(folder, tmp_path / "ours")
    assert Pipeline.from_pretrained(tmp_path / "ours")("red heart", n=2, steps=4, seed=0)[1].tobytes() == \
        images[1].tobytes()
