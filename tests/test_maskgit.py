"""MaskGIT decoding: schedule, determinism, editing constraints, guidance, bad input."""

import math

import pytest
import torch

from fastmuse.errors import ConfigError
from fastmuse.models import MaskedTransformer, MaskedTransformerConfig
from fastmuse.sampling import GUIDANCE_SCHEDULES, MASK_SCHEDULES, maskgit_sample
from fastmuse.sampling.maskgit import halton_rank
from fastmuse.text import TextEmbedding

CFG = MaskedTransformerConfig(codebook_size=16, grid=4, dim=32, depth=2, heads=2, text_dim=8,
                              pooled_dim=6, resolution=16)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = MaskedTransformer(CFG).eval()
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m


def ctx(model, b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return model.prepare_text(TextEmbedding(torch.randn(b, 3, 8, generator=g), torch.randn(b, 6, generator=g),
                                            torch.ones(b, 3, dtype=torch.bool)))


def run(model, tokens, seed=0, **kw):
    b = tokens.shape[0]
    return maskgit_sample(model, tokens, ctx(model, b), ctx(model, b, seed=9),
                          generator=torch.Generator().manual_seed(seed), **kw)


def blank(b=2):
    return torch.full((b, 4, 4), CFG.mask_id)


def test_fills_every_token_and_is_deterministic(model):
    a, b = run(model, blank(), steps=6), run(model, blank(), steps=6)
    assert (a != CFG.mask_id).all() and a.max() < 16
    assert torch.equal(a, b)
    assert not torch.equal(a, run(model, blank(), seed=1, steps=6))


def test_masked_count_follows_schedule(model):
    seen = []
    run(model, blank(1), steps=5, schedule="cosine", callback=lambda i, x: seen.append(int((x == 16).sum())))
    want = [max(1, math.floor(16 * math.cos(math.pi / 2 * (i + 1) / 5))) for i in range(4)] + [0]
    assert seen == want


@pytest.mark.parametrize("schedule", list(MASK_SCHEDULES))
def test_schedules_end_points(schedule):
    f = MASK_SCHEDULES[schedule]
    assert f(0.0) == pytest.approx(1.0) and f(1.0) == pytest.approx(0.0, abs=1e-12)


def test_known_tokens_never_change(model):
    src = torch.randint(0, 16, (2, 4, 4))
    hole = torch.zeros(2, 4, 4, dtype=torch.bool)
    hole[:, 1:3, 1:3] = True
    out = run(model, torch.where(hole, CFG.mask_id, src), steps=4)
    assert torch.equal(out[~hole], src[~hole]) and (out[hole] != CFG.mask_id).all()
    assert torch.equal(run(model, src.clone(), steps=4), src)  # nothing masked: nothing to do


def test_one_step_and_no_guidance(model):
    out = maskgit_sample(model, blank(), ctx(model, 2), None, steps=1, guidance=0.0,
                         generator=torch.Generator().manual_seed(0))
    assert (out != CFG.mask_id).all()


def test_guidance_matters(model):
    plain, guided = run(model, blank(), steps=4, guidance=0.0), run(model, blank(), steps=4, guidance=50.0)
    assert not torch.equal(plain, guided)
    assert GUIDANCE_SCHEDULES["linear"](0.5) == 0.5
    assert GUIDANCE_SCHEDULES["cosine"](1.0) == pytest.approx(1.0)


def test_zero_noise_low_temperature_is_greedy(model):
    """Without noise and with a tiny temperature the sample is the argmax of the guided logits."""
    out = run(model, blank(1), steps=1, guidance=0.0, noise=0.0, temperature=1e-4)
    want = model(blank(1), ctx(model, 1)).argmax(-1)
    assert torch.equal(out, want)


@pytest.mark.parametrize("kw, match", [({"steps": 0}, "steps"), ({"guidance": -1.0}, "guidance"),
                                       ({"schedule": "zigzag"}, "schedule"),
                                       ({"guidance_schedule": "up"}, "guidance_schedule"),
                                       ({"temperature": 0.0}, "temperature"), ({"noise": -1.0}, "noise"),
                                       ({"order": "random"}, "order is 'random'; accepted: confidence"),
                                       ({"refine": -1}, "refine is -1; accepted: an integer >= 0"),
                                       ({"refine": 1, "refine_fraction": 0.0}, "refine_fraction is 0.0")])
def test_bad_arguments_named(model, kw, match):
    with pytest.raises(ConfigError, match=match):
        run(model, blank(), **kw)


def test_guidance_needs_uncond(model):
    with pytest.raises(ConfigError, match="unconditional"):
        maskgit_sample(model, blank(), ctx(model, 2), None, guidance=2.0)


@pytest.mark.parametrize("h, w", [(4, 4), (8, 8), (16, 16), (3, 7)])
def test_halton_rank_is_a_permutation_spread_over_the_grid(h, w):
    rank = halton_rank(h, w)
    assert torch.equal(rank.flatten().sort().values, torch.arange(h * w))
    if h == w and h >= 8:  # the first quarter of the order hits every quadrant
        first = rank < h * w // 4
        half = h // 2
        assert all(first[y:y + half, x:x + half].any() for y in (0, half) for x in (0, half))


def test_halton_decodes_each_position_exactly_once_and_is_deterministic(model):
    steps, history = 5, []
    out = run(model, blank(), steps=steps, order="halton", callback=lambda i, x: history.append(x.clone()))
    assert (out != CFG.mask_id).all() and len(history) == steps
    decided_at = torch.full((2, 4, 4), -1)
    for i, x in enumerate(history):
        known = x != CFG.mask_id
        prev = history[i - 1] if i else blank()
        # once decided, a token never changes and is never re-masked
        assert torch.equal(x[prev != CFG.mask_id], prev[prev != CFG.mask_id])
        decided_at[known & (decided_at < 0)] = i
    assert (decided_at >= 0).all()
    assert torch.equal(out, run(model, blank(), steps=steps, order="halton"))
    other = run(model, blank(), seed=1, steps=steps, order="halton")
    assert not torch.equal(out, other)


def test_halton_reveals_in_the_rolled_halton_order(model):
    """With one token per step, the positions come in Halton order (cyclically shifted)."""
    history = []
    run(model, blank(1), steps=16, schedule="linear", order="halton",
        callback=lambda i, x: history.append(x.clone()))
    first = [int(((history[i] != CFG.mask_id) & ((history[i - 1] if i else blank(1)) == CFG.mask_id))
                 .flatten().nonzero()[0]) for i in range(16)]
    rank = halton_rank(4, 4)
    rolled = [torch.roll(rank, (dy, dx), (0, 1)).flatten() for dy in range(4) for dx in range(4)]
    assert any(torch.equal(r[torch.tensor(first)], torch.arange(16)) for r in rolled)


def test_halton_keeps_known_tokens(model):
    src = torch.randint(0, 16, (2, 4, 4))
    hole = torch.zeros(2, 4, 4, dtype=torch.bool)
    hole[:, :, 2:] = True
    out = run(model, torch.where(hole, CFG.mask_id, src), steps=3, order="halton")
    assert torch.equal(out[~hole], src[~hole]) and (out[hole] != CFG.mask_id).all()


def test_refine_resamples_only_the_least_likely_generated_tokens(model):
    """A refinement round changes only generated tokens, and only among the refine_fraction of
    them it scores lowest; known tokens never change; deterministic per seed."""
    from fastmuse.sampling.maskgit import REFINE_PASSES, refined, scored_logprob

    src = torch.randint(0, 16, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    hole = torch.zeros(2, 4, 4, dtype=torch.bool)
    hole[:, :, 1:] = True  # 12 generated tokens per image; a fraction 0.25 re-samples 3
    canvas = torch.where(hole, CFG.mask_id, src)
    plain = run(model, canvas, steps=4)
    once = run(model, canvas, steps=4, refine=1, refine_fraction=0.25)
    assert torch.equal(once, run(model, canvas, steps=4, refine=1, refine_fraction=0.25))
    assert torch.equal(once[~hole], src[~hole]) and (once != CFG.mask_id).all()
    gen = torch.Generator().manual_seed(5)
    same = torch.Generator().set_state(gen.get_state())  # the draw `refined` makes first
    group = (torch.rand(plain.shape, generator=same) * REFINE_PASSES).long()
    score = scored_logprob(model, plain, ctx(model, 2), None, group, REFINE_PASSES)
    lowest = score.masked_fill(~hole, math.inf).view(2, -1).argsort(1)[:, :3]
    out = refined(model, plain, hole, ctx(model, 2), 1, 0.25, gen, noise=4.5)
    changed = (out != plain).view(2, -1)
    allowed = torch.zeros_like(changed).scatter_(1, lowest, True)
    assert changed.any() and not (changed & ~allowed).any()
    many = run(model, canvas, steps=4, refine=3, refine_fraction=0.25)
    assert torch.equal(many[~hole], src[~hole])
