"""The autoregressive baseline: causal model, KV-cache sampling, pipeline, training."""

import json

import pytest
import torch

from fastmuse.errors import ConfigError
from fastmuse.models import ARTransformer, ARTransformerConfig, load_transformer
from fastmuse.models.transformer import KVCache
from fastmuse.pipeline import Pipeline
from fastmuse.sampling.autoregressive import ar_sample
from fastmuse.text.encoders import TextEmbedding
from fastmuse.train.masked import train_transformer
from helpers import tiny_pipeline
from test_train_transformer import cfg_for, parts  # noqa: F401  (fixture)


@pytest.fixture(scope="module", params=[False, True], ids=["learned-positions", "rope"])
def model(request):
    torch.manual_seed(0)
    m = ARTransformer(ARTransformerConfig(codebook_size=32, grid=4, dim=32, depth=2, heads=2, text_dim=8,
                                          pooled_dim=8, rope=request.param))
    for p in m.parameters():  # adaLN-Zero starts as the identity: randomise to test the maths
        torch.nn.init.normal_(p, std=0.1)
    return m.eval()


@pytest.fixture(scope="module")
def ctx(model):
    gen = torch.Generator().manual_seed(1)
    text = TextEmbedding(torch.randn(2, 5, 8, generator=gen), torch.randn(2, 8, generator=gen),
                         torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool))
    return model.prepare_text(text)


@torch.no_grad()
def test_cached_steps_equal_teacher_forcing(model, ctx):
    tokens = torch.randint(0, 32, (2, 4, 4), generator=torch.Generator().manual_seed(2))
    full = model(tokens, ctx).reshape(2, 16, -1)
    caches = [KVCache() for _ in model.blocks]
    prev, steps = torch.full((2,), model.bos_id), []
    for i in range(16):
        steps.append(model.step(prev, i, ctx, caches))
        prev = tokens.reshape(2, -1)[:, i]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_position_sees_only_earlier_tokens(model, ctx):
    tokens = torch.randint(0, 32, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    changed = tokens.clone().view(2, -1)
    changed[:, 7] = (changed[:, 7] + 1) % 32
    a = model(tokens, ctx).reshape(2, 16, -1)
    b = model(changed.view(2, 4, 4), ctx).reshape(2, 16, -1)
    assert torch.equal(a[:, :8], b[:, :8])  # positions 0..7 read tokens 0..6 only
    assert not torch.allclose(a[:, 8], b[:, 8])


def test_only_the_full_grid(model, ctx):
    with pytest.raises(ConfigError, match="full 4x4 grid"):
        model(torch.zeros(2, 2, 4, dtype=torch.long), ctx)


def test_sampling_seeded_guided_and_top1_greedy(model, ctx):
    blank = torch.full((2, 4, 4), model.mask_id)

    def run(seed, canvas=blank, **kw):
        return ar_sample(model, canvas, ctx, ctx, generator=torch.Generator().manual_seed(seed), **kw)

    a = run(0, guidance=2.0)
    assert a.shape == (2, 4, 4) and a.min() >= 0 and a.max() < 32
    assert torch.equal(a, run(0, guidance=2.0)) and not torch.equal(a, run(1, guidance=2.0))
    assert torch.equal(run(0, guidance=0.0, top_k=1), run(5, guidance=0.0, top_k=1))  # argmax
    greedy = run(0, guidance=0.0, top_k=1)  # the first token is the argmax after BOS
    first = model.step(torch.full((2,), model.bos_id), 0, ctx, [KVCache() for _ in model.blocks])
    assert torch.equal(greedy.view(2, -1)[:, 0], first.argmax(-1))
    with pytest.raises(ConfigError, match="top_k"):
        run(0, top_k=-1)
    prefix = blank.clone().view(2, -1)
    prefix[:, :6] = a.view(2, -1)[:, :6]  # a known prefix is kept; with the same draws the rest follows
    assert torch.equal(run(0, prefix.view(2, 4, 4), guidance=2.0), a)
    forced = blank.clone()
    forced[:, 0, 0] = (a[:, 0, 0] + 1) % 32
    assert torch.equal(run(0, forced, guidance=2.0)[:, 0, 0], forced[:, 0, 0])
    with pytest.raises(ConfigError, match="one grid per text row"):
        run(0, blank[:1])


def test_pipeline_generates_and_refuses_editing(tmp_path):
    folder = tiny_pipeline(tmp_path, autoregressive=True)
    assert isinstance(load_transformer(folder), ARTransformer)
    pipe = Pipeline.from_pretrained(folder)
    images = pipe(["a red square", "a blue circle"], n=2, seed=0)
    assert len(images) == 4 and images[0].size == (32, 32)
    assert pipe(["a red square"], seed=3, top_k=4)[0].tobytes() == pipe(["a red square"], seed=3,
                                                                         top_k=4)[0].tobytes()
    with pytest.raises(ConfigError, match="one step per token: 256"):
        pipe("a red square", steps=12)
    with pytest.raises(ConfigError, match="'noise' does not apply"):
        pipe("a red square", noise=1.0)
    with pytest.raises(ConfigError, match="need a masked model"):
        pipe.inpaint(images[0], "a red square", box=(0, 0, 16, 16))


def test_training_runs_and_logs(parts, tmp_path):  # noqa: F811
    cfg = cfg_for(parts, model=ARTransformerConfig(dim=32, depth=2, heads=2, resolution=32))
    out = train_transformer(cfg, tmp_path / "run")
    assert isinstance(load_transformer(out), ARTransformer)
    saved = json.loads((tmp_path / "run/config.json").read_text())
    assert saved["model"]["kind"] == "ar_transformer"
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in logs if "val_acc" in r]
    assert evals and "val_acc50" not in evals[-1] and 0 <= evals[-1]["val_acc"] <= 1
    first, last = (next(r["loss"] for r in seq if "loss" in r) for seq in (logs, reversed(logs)))
    assert last < first  # 4 steps on 12 solid squares: the next-token loss falls
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == ["step-000002.png",
                                                                             "step-000004.png"]
