"""Meissonic's transformer (models/mmdit.py): blocks against diffusers' Flux blocks, the rotary
embedding against its formula, the parameter names/shapes of the published 1B model, a whole
forward against Meissonic's forward assembled from diffusers' parts, and config errors."""

import math

import pytest
import torch
from torch import nn

from fastmuse.errors import ConfigError
from fastmuse.models.mmdit import (
    MMDiT,
    MMDiTConfig,
    SingleTransformerBlock,
    TransformerBlock,
    apply_rope,
    grid_ids,
    rope_table,
)
from fastmuse.models.transformer import TextContext
from fastmuse.text.encoders import TextEmbedding

diffusers = pytest.importorskip("diffusers")

DIM, HEADS, HEAD_DIM, AXES = 16, 2, 8, (2, 2, 4)


def perturb(module: nn.Module, seed: int = 0) -> nn.Module:
    """Off the init (norm weights at one, zero biases): every weight matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return module.eval()


def joint_ids(n_text: int, h: int, w: int) -> torch.Tensor:
    """Meissonic's txt_ids (zeros) then img_ids ((0, row, col) in raster order)."""
    img = torch.zeros(h, w, 3)
    img[..., 1] += torch.arange(h)[:, None]
    img[..., 2] += torch.arange(w)[None, :]
    return torch.cat([torch.zeros(n_text, 3), img.reshape(h * w, 3)])


def both_tables(ids: torch.Tensor):
    """(ours: cos, sin [S, head_dim/2]), (diffusers FluxPosEmbed: cos, sin [S, head_dim])."""
    from diffusers.models.transformers.transformer_flux import FluxPosEmbed

    cos, sin = rope_table(ids, AXES)
    ref = FluxPosEmbed(theta=10000, axes_dim=list(AXES))(ids)
    return (cos, sin), ref


# -- 1. blocks ----------------------------------------------------------------------------------

def test_grid_ids_and_rope_table_match_flux():
    ids = joint_ids(3, 4, 5)
    assert torch.equal(grid_ids(4, 5).float(), ids[3:])
    (cos, sin), (rcos, rsin) = both_tables(ids)
    assert torch.allclose(cos.repeat_interleave(2, -1), rcos, atol=1e-6)
    assert torch.allclose(sin.repeat_interleave(2, -1), rsin, atol=1e-6)


def test_double_block_matches_flux():
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    torch.manual_seed(0)
    ref = perturb(FluxTransformerBlock(DIM, HEADS, HEAD_DIM))
    ours = TransformerBlock(DIM, HEADS, HEAD_DIM).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, text, temb = torch.randn(2, 12, DIM), torch.randn(2, 5, DIM), torch.randn(2, DIM)
    ours_rope, ref_rope = both_tables(joint_ids(5, 3, 4))
    with torch.no_grad():
        want_text, want = ref(hidden_states=x, encoder_hidden_states=text, temb=temb,
                              image_rotary_emb=ref_rope)
        got_text, got = ours(x, text, temb, ours_rope)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.allclose(got_text, want_text, atol=1e-5), (got_text - want_text).abs().max()


def test_single_block_matches_flux():
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock

    torch.manual_seed(0)
    ref = perturb(FluxSingleTransformerBlock(DIM, HEADS, HEAD_DIM))
    ours = SingleTransformerBlock(DIM, HEADS, HEAD_DIM).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x, text, temb = torch.randn(2, 12, DIM), torch.randn(2, 5, DIM), torch.randn(2, DIM)
    ours_rope, ref_rope = both_tables(joint_ids(5, 3, 4))
    with torch.no_grad():
        want_text, want = ref(hidden_states=x, encoder_hidden_states=text, temb=temb,
                              image_rotary_emb=ref_rope)
        got = ours(torch.cat([text, x], 1), temb, ours_rope)  # Meissonic's block: the joint sequence
    want = torch.cat([want_text, want], 1)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_blocks_have_meissonic_construction_names():
    """Meissonic builds its blocks from diffusers' generic Attention (qk_norm="rms_norm"),
    AdaLayerNormZero(Single) and FeedForward; the names and shapes are ours."""
    from diffusers.models.attention import FeedForward
    from diffusers.models.attention_processor import Attention
    from diffusers.models.normalization import AdaLayerNormZero, AdaLayerNormZeroSingle

    double = nn.Module()
    double.norm1, double.norm1_context = AdaLayerNormZero(DIM), AdaLayerNormZero(DIM)
    double.attn = Attention(query_dim=DIM, cross_attention_dim=None, added_kv_proj_dim=DIM, dim_head=HEAD_DIM,
                            heads=HEADS, out_dim=DIM, context_pre_only=False, bias=True, qk_norm="rms_norm",
                            eps=1e-6)
    double.norm2 = nn.LayerNorm(DIM, elementwise_affine=False, eps=1e-6)
    double.ff = FeedForward(dim=DIM, dim_out=DIM, activation_fn="gelu-approximate")
    double.norm2_context = nn.LayerNorm(DIM, elementwise_affine=False, eps=1e-6)
    double.ff_context = FeedForward(dim=DIM, dim_out=DIM, activation_fn="gelu-approximate")
    single = nn.Module()
    single.norm = AdaLayerNormZeroSingle(DIM)
    single.proj_mlp, single.act_mlp = nn.Linear(DIM, 4 * DIM), nn.GELU(approximate="tanh")
    single.proj_out = nn.Linear(5 * DIM, DIM)
    single.attn = Attention(query_dim=DIM, cross_attention_dim=None, dim_head=HEAD_DIM, heads=HEADS,
                            out_dim=DIM, bias=True, qk_norm="rms_norm", eps=1e-6, pre_only=True)

    def shapes(m: nn.Module) -> dict:
        return {k: tuple(v.shape) for k, v in m.state_dict().items()}

    assert shapes(double) == shapes(TransformerBlock(DIM, HEADS, HEAD_DIM))
    assert shapes(single) == shapes(SingleTransformerBlock(DIM, HEADS, HEAD_DIM))


# -- 2. rotary embedding ------------------------------------------------------------------------

def test_rope_rotates_each_pair_by_its_axis_angle():
    axes, theta = (2, 4, 6), 10000.0
    positions = [(0, 0, 0), (0, 3, 1), (0, 2, 7), (1, 5, 4)]
    x = torch.randn(len(positions), sum(axes))
    cos, sin = rope_table(torch.tensor(positions), axes, theta)
    got = apply_rope(x, cos, sin)
    want = x.clone()
    for s, pos in enumerate(positions):
        offset = 0
        for axis, d in enumerate(axes):
            for i in range(d // 2):
                angle = pos[axis] * theta ** (-2 * i / d)
                a, b = float(x[s, offset + 2 * i]), float(x[s, offset + 2 * i + 1])
                want[s, offset + 2 * i] = a * math.cos(angle) - b * math.sin(angle)
                want[s, offset + 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
            offset += d
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    assert torch.equal(got[0], x[0])  # position (0, 0, 0), as every text token: no rotation


# -- 3. the published 1B model's parameters -----------------------------------------------------

# MeissonFlow/Meissonic transformer/config.json (the keys Transformer2DModel registers)
PUBLISHED = dict(patch_size=1, in_channels=64, num_layers=14, num_single_layers=28, attention_head_dim=128,
                 num_attention_heads=8, joint_attention_dim=1024, pooled_projection_dim=1024,
                 guidance_embeds=False, axes_dims_rope=(16, 56, 56), vocab_size=8256, codebook_size=8192,
                 downsample=True, upsample=True)
# names and shapes derived from Meissonic's src/transformer.py for that config (width 8 x 128)
TOP = {
    "embed.embeddings.weight": (8256, 1024), "embed.layer_norm.weight": (1024,),
    "embed.conv.weight": (1024, 1024, 1, 1),
    "context_embedder.weight": (1024, 1024), "context_embedder.bias": (1024,),
    "encoder_proj_layer_norm.weight": (1024,),
    "cond_embed.linear_1.weight": (1024, 1280 + 1024), "cond_embed.linear_2.weight": (1024, 1024),
    "time_text_embed.timestep_embedder.linear_1.weight": (1024, 256),
    "time_text_embed.timestep_embedder.linear_1.bias": (1024,),
    "time_text_embed.timestep_embedder.linear_2.weight": (1024, 1024),
    "time_text_embed.timestep_embedder.linear_2.bias": (1024,),
    "time_text_embed.text_embedder.linear_1.weight": (1024, 1024),
    "time_text_embed.text_embedder.linear_1.bias": (1024,),
    "time_text_embed.text_embedder.linear_2.weight": (1024, 1024),
    "time_text_embed.text_embedder.linear_2.bias": (1024,),
    "project_to_hidden_norm.weight": (1024,), "project_to_hidden.weight": (1024, 1024),
    "project_from_hidden_norm.weight": (1024,), "project_from_hidden.weight": (1024, 1024),
    "down_block.downsample.norm.weight": (1024,), "down_block.downsample.conv.weight": (1024, 1024, 2, 2),
    "up_block.upsample.norm.weight": (1024,), "up_block.upsample.conv.weight": (1024, 1024, 2, 2),
    "mlm_layer.conv1.weight": (1024, 1024, 1, 1), "mlm_layer.layer_norm.weight": (1024,),
    "mlm_layer.conv2.weight": (8192, 1024, 1, 1),
}
LINEAR, HEAD_NORM = {"weight": (1024, 1024), "bias": (1024,)}, (128,)
DOUBLE = {
    "norm1.linear.weight": (6144, 1024), "norm1.linear.bias": (6144,),
    "norm1_context.linear.weight": (6144, 1024), "norm1_context.linear.bias": (6144,),
    **{f"attn.{p}.{k}": s for p in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj",
                                     "add_v_proj", "to_add_out") for k, s in LINEAR.items()},
    **{f"attn.{n}.weight": HEAD_NORM for n in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")},
    **{f"{ff}.{k}": s for ff in ("ff", "ff_context") for k, s in
       (("net.0.proj.weight", (4096, 1024)), ("net.0.proj.bias", (4096,)), ("net.2.weight", (1024, 4096)),
        ("net.2.bias", (1024,)))},
}
SINGLE = {
    "norm.linear.weight": (3072, 1024), "norm.linear.bias": (3072,),
    "proj_mlp.weight": (4096, 1024), "proj_mlp.bias": (4096,),
    "proj_out.weight": (1024, 5120), "proj_out.bias": (1024,),
    **{f"attn.{p}.{k}": s for p in ("to_q", "to_k", "to_v") for k, s in LINEAR.items()},
    "attn.norm_q.weight": HEAD_NORM, "attn.norm_k.weight": HEAD_NORM,
}


def test_published_1b_parameter_names_and_shapes():
    assert (len(TOP), len(DOUBLE), len(SINGLE)) == (27, 32, 14)
    want = dict(TOP)
    want.update({f"transformer_blocks.{i}.{k}": s for i in range(14) for k, s in DOUBLE.items()})
    want.update({f"single_transformer_blocks.{i}.{k}": s for i in range(28) for k, s in SINGLE.items()})
    assert sum(k.startswith("transformer_blocks.") for k in want) == 14 * 32 == 448
    assert sum(k.startswith("single_transformer_blocks.") for k in want) == 28 * 14 == 392
    with torch.device("meta"):  # allocates nothing
        model = MMDiT(MMDiTConfig(**PUBLISHED))
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert got == want
    assert next(model.parameters()).is_meta
    assert sum(math.prod(s) for s in want.values()) == sum(p.numel() for p in model.parameters())
    assert MMDiTConfig() == MMDiTConfig(**PUBLISHED)  # the defaults are the published model


# -- 4. the whole model -------------------------------------------------------------------------

def tiny_config(**changes) -> MMDiTConfig:
    args = dict(num_layers=1, num_single_layers=2, attention_head_dim=HEAD_DIM, num_attention_heads=HEADS,
                joint_attention_dim=12, pooled_projection_dim=DIM, axes_dims_rope=AXES, vocab_size=20,
                codebook_size=16, sample_size=8, resolution=64, micro_conds=(64.0, 64.0, 0.0, 0.0, 6.0))
    return MMDiTConfig(**{**args, **changes})


def tiny_model(**changes) -> MMDiT:
    torch.manual_seed(0)
    return perturb(MMDiT(tiny_config(**changes)), seed=1)


def tiny_text(b: int = 2, n: int = 5, seed: int = 0) -> TextEmbedding:
    gen = torch.Generator().manual_seed(seed)
    return TextEmbedding(torch.randn(b, n, 12, generator=gen), torch.randn(b, DIM, generator=gen),
                         torch.ones(b, n, dtype=torch.bool))


def tiny_tokens(model: MMDiT, b: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, 16, (b, 8, 8), generator=gen)
    tokens[0, :5] = model.mask_id
    tokens[1, 2:3] = model.mask_id
    return tokens


class MeissonicReference(nn.Module):
    """Meissonic's Transformer2DModel (downsample variant) rebuilt from the diffusers parts it
    imports, its forward followed step by step; parameter names as its own."""

    def __init__(self, cfg: MMDiTConfig) -> None:
        from diffusers.models.downsampling import Downsample2D
        from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings, TimestepEmbedding
        from diffusers.models.normalization import RMSNorm
        from diffusers.models.transformers.transformer_flux import (
            FluxPosEmbed,
            FluxSingleTransformerBlock,
            FluxTransformerBlock,
        )
        from diffusers.models.unets.uvit_2d import ConvMlmLayer, UVit2DConvEmbed
        from diffusers.models.upsampling import Upsample2D

        super().__init__()
        d, heads, hd = cfg.width, cfg.num_attention_heads, cfg.attention_head_dim
        self.pos_embed = FluxPosEmbed(theta=10000, axes_dim=list(cfg.axes_dims_rope))
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(embedding_dim=d,
                                                                   pooled_projection_dim=cfg.pooled_projection_dim)
        self.context_embedder = nn.Linear(cfg.joint_attention_dim, d)
        self.transformer_blocks = nn.ModuleList(FluxTransformerBlock(d, heads, hd)
                                                for _ in range(cfg.num_layers))
        self.single_transformer_blocks = nn.ModuleList(FluxSingleTransformerBlock(d, heads, hd)
                                                       for _ in range(cfg.num_single_layers))
        self.embed = UVit2DConvEmbed(d, d, cfg.vocab_size, True, 1e-6, False)
        self.mlm_layer = ConvMlmLayer(d, d, False, True, 1e-6, cfg.codebook_size)
        self.cond_embed = TimestepEmbedding(1280 + cfg.pooled_projection_dim, d, sample_proj_bias=False)
        self.encoder_proj_layer_norm = RMSNorm(d, 1e-6, True)
        self.project_to_hidden_norm = RMSNorm(d, 1e-6, True)
        self.project_to_hidden = nn.Linear(d, d, bias=False)
        self.project_from_hidden_norm = RMSNorm(d, 1e-6, True)
        self.project_from_hidden = nn.Linear(d, d, bias=False)
        self.down_block, self.up_block = nn.Module(), nn.Module()
        self.down_block.downsample = Downsample2D(d, use_conv=True, padding=0, name="Conv2d_0", kernel_size=2,
                                                  norm_type="rms_norm", eps=1e-6, elementwise_affine=True,
                                                  bias=False)
        self.up_block.upsample = Upsample2D(d, use_conv_transpose=True, kernel_size=2, padding=0, name="conv",
                                            norm_type="rms_norm", eps=1e-6, elementwise_affine=True,
                                            bias=False, interpolate=False)

    def forward(self, ids, encoder_hidden_states, pooled_projections, timestep, img_ids, txt_ids,
                micro_conds):
        from diffusers.models.embeddings import get_timestep_embedding

        b = ids.shape[0]
        micro = get_timestep_embedding(micro_conds.flatten(), 256, flip_sin_to_cos=True,
                                       downscale_freq_shift=0)
        pooled = self.cond_embed(torch.cat([pooled_projections, micro.reshape(b, -1)], dim=1))
        x = self.embed(ids)
        text = self.encoder_proj_layer_norm(self.context_embedder(encoder_hidden_states))
        x = self.down_block.downsample(x)
        _, c, h, w = x.shape
        x = self.project_to_hidden(self.project_to_hidden_norm(x.permute(0, 2, 3, 1).reshape(b, h * w, c)))
        temb = self.time_text_embed(timestep * 1000, pooled)
        rope = self.pos_embed(torch.cat([txt_ids, img_ids], dim=0))
        for block in self.transformer_blocks:
            text, x = block(hidden_states=x, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        for block in self.single_transformer_blocks:  # Meissonic's takes [text, x] joined: same numbers
            text, x = block(hidden_states=x, encoder_hidden_states=text, temb=temb, image_rotary_emb=rope)
        x = self.project_from_hidden(self.project_from_hidden_norm(x))
        x = self.up_block.upsample(x.reshape(b, h, w, c).permute(0, 3, 1, 2))
        return self.mlm_layer(x)


def test_forward_matches_meissonic_forward_from_diffusers_parts():
    cfg = tiny_config()
    torch.manual_seed(0)
    ref = perturb(MeissonicReference(cfg), seed=2)
    ours = MMDiT(cfg).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the identity key table
    tokens, text = tiny_tokens(ours), tiny_text()
    micro = torch.tensor([[64.0, 64, 0, 0, 6], [512, 384, 10, 3, 5]])
    # Meissonic's training: timestep = mask ratio x 1000; img_ids of the downsampled 4x4 grid
    timestep = (tokens == ours.mask_id).float().mean((1, 2)) * 1000
    ids = joint_ids(5, 4, 4)
    with torch.no_grad():
        want = ref(tokens, text.hidden, text.pooled, timestep, ids[5:], ids[:5], micro)
        got = ours(tokens, ours.prepare_text(text, micro))
    assert got.shape == (2, 8, 8, 16)
    got = got.permute(0, 3, 1, 2)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()


def test_tiny_forward_shapes_conditions_and_text_context():
    model = tiny_model()
    tokens, text = tiny_tokens(model), tiny_text()
    with torch.no_grad():
        from_embedding = model(tokens, text)
        ctx = model.prepare_text(text)
        from_context = model(tokens, ctx)
        other_micro = model(tokens, model.prepare_text(text, torch.tensor([1024.0, 512, 4, 4, 3])))
        more_masked = tokens.clone()
        more_masked[1, 0] = model.mask_id
        other_step = model(more_masked, ctx)  # the masked fraction is the timestep
    assert from_embedding.shape == (2, 8, 8, 16)
    assert torch.equal(from_embedding, from_context)
    assert not torch.allclose(other_micro, from_context, atol=1e-3)
    assert torch.allclose(other_step[0], from_context[0])
    assert not torch.allclose(other_step[1, 1:], from_context[1, 1:], atol=1e-3)
    states, rope = ctx.kv[0]
    assert states.shape == (2, 1, 5, DIM) and rope.shape == (2, 2, 5, HEAD_DIM // 2)


def test_text_context_cat_and_repeat_pad_correctly():
    """TextContext.cat pads the text axis (dim 2) of the projected states and of the rotary
    table; the padding is masked out, so each row is as if alone."""
    model = tiny_model()
    tokens = tiny_tokens(model)
    short, long = tiny_text(1, 3, seed=4), tiny_text(1, 6, seed=5)
    with torch.no_grad():
        a = model(tokens[:1], model.prepare_text(short))
        b = model(tokens[1:], model.prepare_text(long))
        both = model(tokens, TextContext.cat([model.prepare_text(short), model.prepare_text(long)]))
        twice = model(tokens[:1].repeat(2, 1, 1), model.prepare_text(short).repeat(2))
    assert torch.allclose(both[0], a[0], atol=1e-5) and torch.allclose(both[1], b[0], atol=1e-5)
    assert torch.allclose(twice[1], a[0], atol=1e-5)


def test_grid_without_downsample_and_odd_grid_error():
    model = tiny_model(downsample=False, upsample=False)
    with torch.no_grad():
        out = model(torch.randint(0, 16, (1, 6, 5)), tiny_text(1))
    assert out.shape == (1, 6, 5, 16) and "down_block.downsample.conv.weight" not in model.state_dict()
    with pytest.raises(ConfigError, match="even sides"):
        tiny_model()(torch.zeros(1, 7, 8, dtype=torch.long), tiny_text(1))


# -- 5. config ----------------------------------------------------------------------------------

@pytest.mark.parametrize("changes,field", [
    (dict(axes_dims_rope=(16, 56, 48)), "axes_dims_rope"),
    (dict(axes_dims_rope=(16, 55, 57)), "axes_dims_rope"),
    (dict(axes_dims_rope=(64, 64)), "axes_dims_rope"),
    (dict(pooled_projection_dim=768), "pooled_projection_dim"),
    (dict(vocab_size=8192), "vocab_size"),
    (dict(upsample=False), "upsample"),
    (dict(patch_size=2), "patch_size"),
    (dict(guidance_embeds=True), "guidance_embeds"),
    (dict(micro_conds=(1024.0, 1024.0)), "micro_conds"),
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(num_layers=-1), "num_layers"),
    (dict(sample_size=63), "sample_size"),
])
def test_config_errors_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=f"'{field}'"):
        MMDiTConfig(**changes)


def test_config_round_trip_and_properties():
    cfg = MMDiTConfig()
    again = MMDiTConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.axes_dims_rope == (16, 56, 56)
    assert cfg.to_dict()["kind"] == "mmdit"
    assert (cfg.grid, cfg.mask_id, cfg.text_dim, cfg.pooled_dim, cfg.width) == (64, 8255, 1024, 1024, 1024)


def test_meissonic_transformer_folder_loads(tmp_path):
    """A Meissonic transformer/ folder (config.json + safetensors, the reference's key names)
    loads through the same entry point as aMUSEd's and computes the reference's logits."""
    import json

    from safetensors.torch import save_file

    from fastmuse.models.from_diffusers import load_diffusers_transformer

    cfg = tiny_config()
    torch.manual_seed(0)
    ref = perturb(MeissonicReference(cfg), seed=2)
    folder = tmp_path / "transformer"
    folder.mkdir()
    keys = ("patch_size", "in_channels", "num_layers", "num_single_layers", "attention_head_dim",
            "num_attention_heads", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds",
            "axes_dims_rope", "vocab_size", "codebook_size", "downsample", "upsample")
    config = {"_class_name": "Transformer2DModel", "_diffusers_version": "0.30.1",
              **{k: getattr(cfg, k) for k in keys}}
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    ours = load_diffusers_transformer(folder, downsampling=8)
    assert isinstance(ours, MMDiT) and ours.config.grid == 64 and ours.config.resolution == 512
    tokens, text = tiny_tokens(ours), tiny_text()
    micro = torch.tensor([[512.0, 512, 0, 0, 6]] * 2)
    ids = joint_ids(5, 4, 4)
    with torch.no_grad():
        want = ref(tokens, text.hidden, text.pooled, (tokens == ours.mask_id).float().mean((1, 2)) * 1000,
                   ids[5:], ids[:5], micro)
        got = ours(tokens, ours.prepare_text(text)).permute(0, 3, 1, 2)
    assert torch.allclose(got, want, atol=1e-5)
