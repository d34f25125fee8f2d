"""Micro-conditions, the super-resolution stage, warm starts, views and two-stage pipelines."""

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fastmuse.cli import main
from fastmuse.data.tokens import TokenData, colourfulness, views
from fastmuse.errors import ConfigError
from fastmuse.models import ARTransformerConfig, MaskedTransformer, MaskedTransformerConfig, TextContext
from fastmuse.pipeline import Pipeline, SamplerDefaults, check_stages
from fastmuse.text import load_text_encoder
from fastmuse.text.encoders import TextEmbedding
from fastmuse.tokenizer import VQTokenizer
from fastmuse.train.export import export_run
from fastmuse.train.masked import TransformerTrainConfig, train_transformer
from fastmuse.train.warm_start import warm_start
from helpers import assert_resumes_exactly, tiny_dataset, tiny_text_encoder, tiny_tokenizer

MICRO = ("orig_size", "crop_top", "crop_left", "score")


def cfg(**kw) -> MaskedTransformerConfig:
    return MaskedTransformerConfig(**{**dict(codebook_size=16, grid=4, dim=32, depth=2, heads=2, text_dim=8,
                                             pooled_dim=8), **kw})


def text(b: int = 2) -> TextEmbedding:
    g = torch.Generator().manual_seed(0)
    return TextEmbedding(torch.randn(b, 3, 8, generator=g), torch.randn(b, 8, generator=g),
                         torch.ones(b, 3, dtype=torch.bool))


def randomize(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return model.eval()


def test_new_conditions_start_switched_off():
    """A fresh micro / super-res model computes what the same weights without them compute:
    why a warm start from a plain model begins where that model was."""
    torch.manual_seed(0)
    plain = MaskedTransformer(cfg())
    both = MaskedTransformer(cfg(micro_conds=MICRO, low_res_grid=2, text_layers=1, text_positions=4))
    both.load_state_dict(plain.state_dict(), strict=False)
    tokens = torch.randint(0, 17, (2, 4, 4))
    micro = torch.tensor([[64.0, 0, 0, 50], [90, 10, 3, float("nan")]])
    low = torch.randint(0, 16, (2, 2, 2))
    assert torch.equal(plain(tokens, text()), both(tokens, text(), micro=micro, low_res=low))


def test_text_layers_learn_and_ignore_padding():
    """Trained text layers change what the blocks read (once their weights move from zero),
    and padded caption positions stay invisible to them."""
    m = randomize(MaskedTransformer(cfg(text_layers=2)))
    plain = MaskedTransformer(cfg())
    plain.load_state_dict(m.state_dict(), strict=False)
    tokens = torch.full((2, 4, 4), 16)
    assert not torch.allclose(m(tokens, text()), plain.eval()(tokens, text()))
    t = text()
    t.mask[:, 2] = False
    other = TextEmbedding(t.hidden.clone(), t.pooled, t.mask)
    other.hidden[:, 2] += 5.0  # only a padded position changes
    assert torch.allclose(m(tokens, t), m(tokens, other), atol=1e-5)
    with pytest.raises(ConfigError, match="text_layers"):
        cfg(text_layers=-1)


def test_text_positions_make_word_order_visible():
    """Cross-attention alone reads the text states as a set: the same states in another order
    give the same logits. Caption-position embeddings make the order count (which shape is the
    subject of "left of"); captions longer than the embedded positions still work."""
    tokens = torch.full((2, 4, 4), 16)
    t = text()
    flipped = TextEmbedding(t.hidden.flip(1), t.pooled, t.mask)
    plain = randomize(MaskedTransformer(cfg()))
    assert torch.allclose(plain(tokens, t), plain(tokens, flipped), atol=1e-5)
    m = randomize(MaskedTransformer(cfg(text_positions=2)))
    assert not torch.allclose(m(tokens, t), m(tokens, flipped), atol=1e-3)
    assert m.text_pos.shape == (2, 32)  # 3 caption tokens, 2 embedded positions: the last is shared
    with pytest.raises(ConfigError, match="text_positions"):
        cfg(text_positions=-1)


def test_micro_conditions_steer_and_nan_is_unknown():
    m = randomize(MaskedTransformer(cfg(micro_conds=("orig_size", "score"))))
    tokens = torch.full((2, 4, 4), 16)
    a = m(tokens, text(), micro=torch.tensor([[64.0, 10], [64, 10]]))
    b = m(tokens, text(), micro=torch.tensor([[64.0, 90], [64, 90]]))
    assert not torch.allclose(a, b)
    # an unknown value's number is ignored; None means every condition unknown
    u1 = m(tokens, text(), micro=torch.tensor([[float("nan"), float("nan")]] * 2))
    assert torch.equal(u1, m(tokens, text()))
    with pytest.raises(ConfigError, match=r"accepted: \(2, 2\) for orig_size, score"):
        m(tokens, text(), micro=torch.zeros(2, 4))
    with pytest.raises(ConfigError, match="this model has none"):
        randomize(MaskedTransformer(cfg()))(tokens, text(), micro=torch.zeros(2, 1))


def test_low_res_lands_on_the_block_it_covers():
    m = randomize(MaskedTransformer(cfg(low_res_grid=2)))
    ctx = m.prepare_text(text(1))
    low = torch.tensor([[[1, 2], [3, 4]]])
    moved = low.clone()
    moved[0, 1, 0] = 9
    diff = (m.with_low_res(ctx, low).grid - m.with_low_res(ctx, moved).grid).abs().sum(-1).view(4, 4)
    assert (diff[2:, :2] > 0).all() and diff.sum() == diff[2:, :2].sum()
    # guidance batches carry the grid along
    both = TextContext.cat([m.with_low_res(ctx, low), m.with_low_res(ctx, moved)]).repeat(2)
    assert both.grid.shape == (4, 16, 32) and torch.equal(both.grid[2], m.with_low_res(ctx, moved).grid[0])
    with pytest.raises(ConfigError, match=r"accepted: integer token grids \(1, 2, 2\)"):
        m.with_low_res(ctx, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ConfigError, match="outside the codes"):
        m.with_low_res(ctx, torch.full((1, 2, 2), 16))
    with pytest.raises(ConfigError, match="from 2x2 low_res tokens"):
        m(torch.full((1, 4, 4), 16), text(1))


@pytest.mark.parametrize("kw, match", [
    (dict(low_res_grid=3), "proper divisor"), (dict(low_res_grid=4), "proper divisor"),
    (dict(micro_conds=("score", "orig_size")), "in that order"), (dict(micro_conds=("size",)), "distinct"),
])
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        cfg(**kw)


def test_autoregressive_model_refuses_conditions():
    with pytest.raises(ConfigError, match="text only"):
        ARTransformerConfig(micro_conds=("score",))


def test_warm_start_resamples_positions(tmp_path):
    torch.manual_seed(0)
    src = randomize(MaskedTransformer(cfg()))
    src.save_pretrained(tmp_path / "src")
    dst = MaskedTransformer(cfg(grid=2, micro_conds=("score",)))
    summary = warm_start(dst, str(tmp_path / "src"))
    assert "row_emb, col_emb resampled" in summary and "new: micro" in summary
    assert torch.allclose(dst.row_emb, (src.row_emb[0::2] + src.row_emb[1::2]) / 2)
    assert torch.equal(dst.head.weight, src.head.weight)
    with pytest.raises(ConfigError, match="has shape"):
        warm_start(MaskedTransformer(cfg(dim=64)), str(tmp_path / "src"))


def test_warm_start_into_a_deeper_model_keeps_the_function(tmp_path):
    """A masked model twice the source's depth starts as the source (its new blocks switched
    off), so a deeper continuation begins where the bundled model is."""
    src = randomize(MaskedTransformer(cfg(rope=True, text_layers=1)))
    src.save_pretrained(tmp_path / "src")
    dst = MaskedTransformer(cfg(depth=4, rope=True, text_layers=1))
    assert "depth 2 -> 4" in warm_start(dst, str(tmp_path / "src"))
    tokens = torch.randint(0, 17, (2, 4, 4))
    assert torch.allclose(dst(tokens, text()), src(tokens, text()), atol=1e-5)
    assert torch.equal(dst.blocks[2].qkv.weight, src.blocks[1].qkv.weight)
    assert dst.blocks[1].ada.weight[64:96].abs().sum() == 0  # the copy's attention gate


def test_views_record_their_micro_conditions():
    image = torch.rand(3, 32, 32) * 2 - 1
    out = list(views(image, 16, 2, "k"))
    assert len(out) == 3 and all(v.shape == (3, 16, 16) for v, _ in out)
    assert out[0][1][:3] == [16.0, 0.0, 0.0]
    for view, (size, top, left, score) in out[1:]:
        crop = round(32 * 16 / size)  # the window's side in source px
        assert 16 <= crop <= 29 and 0 <= top <= size - 16 and 0 <= left <= size - 16
        assert score == pytest.approx(colourfulness(view), abs=0.01)
    assert [m for _, m in views(image, 16, 2, "k")] == [m for _, m in out]  # a function of the key
    assert colourfulness(torch.zeros(3, 8, 8)) == 0.0
    red = torch.tensor([1.0, -1, -1])[:, None, None].expand(3, 8, 8)
    assert colourfulness(red) == pytest.approx(0.3 * math.hypot(255, 127.5), rel=1e-4)


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Tiny chain: base 16 px (8x8 tokens of the f2 tokenizer) with micro-conditions ->
    super-resolution to 32 px (16x16); and a plain 32 px model."""
    root = tmp_path_factory.mktemp("stages")
    tok, te = tiny_tokenizer(root / "tok"), tiny_text_encoder(root / "te")
    tokenizer, encoder = VQTokenizer.from_pretrained(tok), load_text_encoder(str(te))
    common = dict(codebook_size=16, dim=32, depth=1, heads=2, text_dim=32, pooled_dim=32, tokenizer=str(tok),
                  text_encoder=str(te))
    folders = {}
    for name, kw in {"base": dict(grid=8, resolution=16, micro_conds=("orig_size", "score")),
                     "sr": dict(grid=16, resolution=32, low_res_grid=8),
                     "plain": dict(grid=16, resolution=32)}.items():
        model = randomize(MaskedTransformer(MaskedTransformerConfig(**common, **kw)))
        defaults = SamplerDefaults(steps=2, guidance=1.0, micro={"orig_size": 16.0, "score": 50.0}
                                   if name == "base" else None)
        folders[name] = str(Pipeline(model, tokenizer, encoder, defaults).save_pretrained(root / name))
    return folders


def test_two_stages_upsample_the_base_tokens(stages):
    pipe = Pipeline.from_stages([stages["base"], stages["sr"]])
    assert pipe.resolution == 32
    tokens = pipe.generate_tokens(["a", "b"], n=2, seed=3)
    assert tokens.shape == (4, 16, 16)
    low = Pipeline.from_pretrained(stages["base"]).generate_tokens(["a", "b"], n=2, seed=3)
    sr = Pipeline.from_pretrained(stages["sr"])
    assert torch.equal(tokens, sr.generate_tokens(["a", "b"], n=2, seed=3, low_res=low))
    images = pipe("a", n=1, micro={"score": 90})
    assert images[0].size == (32, 32)
    with pytest.raises(ConfigError, match="editing"):
        pipe.generate_tokens("a", init=torch.full((16, 16), 16))


def test_micro_arguments_merge_over_defaults(stages):
    pipe = Pipeline.from_pretrained(stages["base"])
    assert pipe.micro_values(None).tolist() == [[16.0, 50.0]]
    assert pipe.micro_values({"score": 90}).tolist() == [[16.0, 90.0]]
    assert math.isnan(pipe.micro_values({"score": None})[0, 1])
    a = pipe.generate_tokens("a", n=2, seed=0, micro={"score": 0})
    b = pipe.generate_tokens("a", n=2, seed=0, micro={"score": 120})
    assert not torch.equal(a, b)
    with pytest.raises(ConfigError, match="accepted: orig_size, score"):
        pipe("a", micro={"crop_top": 3})
    with pytest.raises(ConfigError, match="accepted: a number"):
        pipe("a", micro={"score": "high"})
    with pytest.raises(ConfigError, match="no micro-conditions"):
        Pipeline.from_pretrained(stages["plain"])("a", micro={"score": 1})


def test_unsupported_chains_are_refused(stages):
    with pytest.raises(ConfigError, match="needs|super-resolution stage"):
        Pipeline.from_pretrained(stages["sr"])("a")
    with pytest.raises(ConfigError, match="a chain starts with a text-to-image model"):
        Pipeline.from_stages([stages["sr"], stages["sr"]])
    with pytest.raises(ConfigError, match="is not a super-resolution model"):
        Pipeline.from_stages([stages["base"], stages["plain"]])
    with pytest.raises(ConfigError, match="upsamples 8x8 grids.*makes 16x16 grids"):
        Pipeline.from_stages([stages["plain"], stages["sr"]])
    with pytest.raises(ConfigError, match="accepted: a list"):
        Pipeline.from_stages([])


def test_bundled_chain_is_listed_in_errors():
    base = MaskedTransformerConfig(grid=16)
    sr = MaskedTransformerConfig(grid=16, low_res_grid=8)
    with pytest.raises(ConfigError, match="Supported: muse-64 muse-sr-128"):
        check_stages([base, sr], ["muse-128", "muse-sr-128"])


def test_cli_stages_and_micro(stages, tmp_path, capsys):
    out = tmp_path / "x.png"
    main(["generate", "a", "--stages", stages["base"], stages["sr"], "--micro", "score=80",
          "--output", str(out)])
    assert out.is_file() and "32px" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["generate", "a", "--micro", "score", "--output", str(out)])
    assert "--micro must be NAME=VALUE" in capsys.readouterr().err


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return dict(data=(str(tiny_dataset(root / "d", n=16, size=32)),), repeats=(1,),
                tokenizer=str(tiny_tokenizer(root / "tok")), text_encoder=str(tiny_text_encoder(root / "te")),
                cache_dir=str(root / "cache"), batch_size=4, steps=4, warmup_steps=1, log_every=1,
                eval_every=2, save_every=2, sample_steps=2, sample_prompts=("a red square", "a blue square"))


def test_trains_a_micro_conditioned_base_from_views(parts, tmp_path):
    model = MaskedTransformerConfig(dim=32, depth=1, heads=2, resolution=16, micro_conds=MICRO)
    cfg = TransformerTrainConfig(model=model, read_resolution=32, crops=1, **parts)
    out = train_transformer(cfg, tmp_path / "run")
    assert MaskedTransformer.from_pretrained(out).config.micro_conds == MICRO
    data = TokenData.load(next(p for p in Path(parts["cache_dir"]).iterdir() if "views" in
                               (p / "info.json").read_text()))
    assert len(data.train) == 2 * 12 and data.train.tokens.shape[1:] == (8, 8)
    assert data.train.micro[0::2, :3].tolist() == [[16.0, 0.0, 0.0]] * 12  # whole views, then a crop each
    assert (data.train.micro[1::2, 0] > 16).all()
    card = export_run(tmp_path / "run", tmp_path / "m", "tiny-base", dtype="fp16")
    weights = load_file(card / "model.safetensors")
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float16}
    back = MaskedTransformer.from_pretrained(card).state_dict()  # upcast at load
    for k, v in MaskedTransformer.from_pretrained(out).state_dict().items():
        torch.testing.assert_close(back[k], v.half().float(), rtol=0, atol=0)
    micro = Pipeline.from_pretrained(card).defaults.micro
    assert list(micro) == list(MICRO) and micro["orig_size"] == 16.0 and micro["crop_top"] == 0.0
    assert micro["score"] == pytest.approx(float(data.train.micro[0::2, 3].median()), abs=0.05)
    assert "## Micro-conditions" in (card / "README.md").read_text()
    assert "Stored as fp16" in (card / "README.md").read_text()


def test_super_resolution_run_resumes_exactly(parts, tmp_path):
    model = MaskedTransformerConfig(dim=32, depth=1, heads=2, resolution=32, low_res_grid=8)
    cfg = TransformerTrainConfig(model=model, **parts)
    def train(c, out, **kw):  # the helper wants the run folder back
        train_transformer(c, out, **kw)
        return out

    out = assert_resumes_exactly(train, cfg, tmp_path, ("model", "ema"))
    trained = MaskedTransformer.from_pretrained(out / "transformer")
    assert trained.config.low_res_grid == 8 and trained.low_emb.weight.abs().sum() > 0  # it learned from them
    card = export_run(out, tmp_path / "m", "tiny-sr", defaults=SamplerDefaults(steps=2, guidance=1.0))
    text = (card / "README.md").read_text()
    assert "## Super-resolution" in text and "--stages BASE tiny-sr" in text and "acc50" in text
    with pytest.raises(ConfigError, match="whole images"):
        train_transformer(cfg.replace(crops=1), tmp_path / "c")
