"""Di[M]O one-step distillation: the divergence gradients, the one-step sampler, the method on a
toy Markov chain with an exact teacher, and the training run (resume, student folder, a
converted aMUSEd teacher)."""

import base64
import copy
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from fastmuse.cli import main
from fastmuse.distill.dimo import DiMOSettings, aux_loss, divergence_grad, generator_loss, student_forward
from fastmuse.distill.dimo_train import DiMOConfig, distill_dimo, teacher_target
from fastmuse.errors import ConfigError
from fastmuse.models import MaskedTransformer, MaskedTransformerConfig
from fastmuse.pipeline import Pipeline
from fastmuse.sampling.maskgit import guidance_context, guided_logits
from fastmuse.sampling.one_step import embedding_noise, initial_state, token_embedding
from fastmuse.serve.app import ServeSettings, create_app
from fastmuse.train.losses import random_mask
from helpers import assert_resumes_exactly, tiny_dataset, tiny_pipeline


def test_divergence_gradients_are_the_kl_gradients():
    torch.manual_seed(0)
    teacher, logits = torch.randn(5, 7), torch.randn(5, 7, requires_grad=True)
    log_t = teacher.log_softmax(-1)
    fkl = F.kl_div(logits.log_softmax(-1), log_t, log_target=True, reduction="sum")  # KL(p_T || p)
    rkl = F.kl_div(log_t, logits.log_softmax(-1), log_target=True, reduction="sum")  # KL(p || p_T)
    g_f, = torch.autograd.grad(fkl, logits)
    g_r, = torch.autograd.grad(rkl, logits)
    assert torch.allclose(divergence_grad(teacher, logits.detach(), 0.0), g_f, atol=1e-6)
    assert torch.allclose(divergence_grad(teacher, logits.detach(), 1.0), g_r, atol=1e-6)
    assert torch.allclose(divergence_grad(teacher, logits.detach(), 0.3), 0.7 * g_f + 0.3 * g_r, atol=1e-6)


def test_initial_state_and_embedding_noise():
    mask = 16
    tokens = torch.full((3, 4, 4), mask)
    tokens[:, 0] = 5  # known row (editing): kept
    gen = torch.Generator().manual_seed(0)
    state = initial_state(tokens, 16, mask, 0.5, gen)
    assert torch.equal(state[:, 0], tokens[:, 0])
    assert ((state[:, 1:] == mask).sum((1, 2)) == 6).all() and int(state.max()) == mask
    alone = initial_state(tokens[1:2], 16, mask, 0.5, torch.Generator().manual_seed(7))
    rows = initial_state(tokens[:2], 16, mask, 0.5, [(torch.Generator().manual_seed(3), 1),
                                                     (torch.Generator().manual_seed(7), 1)])
    assert torch.equal(rows[1:2], alone)  # per-row streams: a row does not depend on the others

    model = MaskedTransformer(MaskedTransformerConfig(codebook_size=16, grid=4, dim=32, depth=1, heads=2,
                                                      text_dim=8, pooled_dim=8))
    emb = token_embedding(model)
    assert emb is model.tok_emb
    ids = torch.randint(0, 16, (2, 16))
    with embedding_noise(model, 0.5, 1, torch.Generator().manual_seed(0)):
        noisy = emb(ids)
    assert torch.allclose(noisy[0] - noisy[1], (emb(ids[0]) - emb(ids[1])) * 0.75 ** 0.5, atol=1e-6)
    assert torch.equal(emb(ids), model.tok_emb.weight[ids])  # the hook is gone


# -- the method on a toy problem with an exact teacher -----------------------------------------------

K, L = 4, 6
PI0 = torch.tensor([0.4, 0.3, 0.2, 0.1])
T = torch.tensor([[0.7, 0.2, 0.05, 0.05], [0.1, 0.1, 0.7, 0.1], [0.05, 0.05, 0.1, 0.8], [0.6, 0.1, 0.1, 0.2]])


def chain(n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.empty(n, L, dtype=torch.long)
    x[:, 0] = torch.multinomial(PI0, n, True, generator=gen)
    for j in range(1, L):
        x[:, j] = torch.multinomial(T[x[:, j - 1]], 1, generator=gen)[:, 0]
    return x


def exact_conditionals(tokens: torch.Tensor) -> torch.Tensor:
    """log p(x_j | the unmasked tokens) for every j: forward-backward over the chain."""
    e = torch.ones(*tokens.shape, K)
    seen = tokens < K
    e[seen] = F.one_hot(tokens[seen], K).float()
    fwd = [PI0 * e[:, 0]]
    for j in range(1, L):
        fwd.append((fwd[-1] @ T) * e[:, j])
        fwd[-1] = fwd[-1] / fwd[-1].sum(-1, keepdim=True)
    bwd = [torch.ones(len(tokens), K)]
    for j in range(L - 2, -1, -1):
        bwd.insert(0, (e[:, j + 1] * bwd[0]) @ T.T)
        bwd[0] = bwd[0] / bwd[0].sum(-1, keepdim=True)
    post = torch.stack([f * b for f, b in zip(fwd, bwd, strict=True)], 1)
    return (post / post.sum(-1, keepdim=True)).clamp_min(1e-12).log()


class ToyModel(nn.Module):
    mask_id = K

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(K + 1, 32)
        self.pos = nn.Parameter(0.1 * torch.randn(L, 32))
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(L * 32, 128), nn.GELU(), nn.Linear(128, 128),
                                 nn.GELU(), nn.Linear(128, L * K))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.emb(x) + self.pos).view(len(x), L, K)


def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position marginals [L, K] and adjacent-pair joints [L - 1, K * K]."""
    return F.one_hot(x, K).float().mean(0), F.one_hot(x[:, :-1] * K + x[:, 1:], K * K).float().mean(0)


def test_one_step_student_matches_a_markov_chain():
    """Teacher = the exact conditionals of a Markov chain. The student (and the auxiliary model)
    start from a network pre-trained by masked modelling on chain samples, as a real student
    starts from the teacher network; after Di[M]O, the one-step student's marginals and
    adjacent-pair probabilities are within 0.03 of the chain's (0.15 and 0.19 at the start)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    net = ToyModel()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(300):
        x = chain(256, gen)
        masked, where = random_mask(x, K, gen)
        loss = F.cross_entropy(net(masked)[where], x[where])
        opt.zero_grad()
        loss.backward()
        opt.step()
    student, aux, ema = net, copy.deepcopy(net), copy.deepcopy(net)
    s = DiMOSettings(codebook_size=K, mask_id=K)
    opt_s, opt_a = torch.optim.Adam(student.parameters(), 3e-4), torch.optim.Adam(aux.parameters(), 1e-3)

    def logits_of(m, x):
        return m(x).float()

    def remask(t, g):
        return random_mask(t, K, g)

    def errors(model):
        with torch.no_grad():
            _, x = student_forward(model, logits_of, torch.full((20000, L), K), s,
                                   torch.Generator().manual_seed(2))
        return [(a - b).abs().max().item() for a, b in zip(statistics(x), truth, strict=True)]

    truth = statistics(chain(50000, torch.Generator().manual_seed(1)))
    before = errors(student)
    blank = torch.full((256, L), K)
    for _ in range(500):
        for _ in range(4):
            loss, _ = aux_loss(student, aux, logits_of, remask, blank, s, gen)
            opt_a.zero_grad()
            loss.backward()
            opt_a.step()
        loss, logs = generator_loss(student, aux, exact_conditionals, logits_of, remask, blank, s, gen)
        opt_s.zero_grad()
        loss.backward()
        opt_s.step()
        with torch.no_grad():
            for pe, ps in zip(ema.parameters(), student.parameters(), strict=True):
                pe.lerp_(ps, 0.02)
    after = errors(ema)
    assert min(before) > 0.1, before
    assert max(after) < 0.03, after


# -- the training run ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    root = tmp_path_factory.mktemp("dimo")
    return {"teacher": str(tiny_pipeline(root)), "data": (str(tiny_dataset(root / "d", n=16, size=32)),),
            "cache_dir": str(root / "cache")}


def cfg_for(parts, **kw) -> DiMOConfig:
    base = dict(batch_size=3, steps=4, aux_updates=2, lr=1e-3, aux_lr=1e-3, warmup_steps=1, log_every=1,
                eval_every=2, save_every=2, sample_prompts=("a red square", "a blue square"))
    return DiMOConfig(**{**parts, **base, **kw})


def test_run_resumes_exactly_and_the_student_loads(teacher, tmp_path):
    cfg = cfg_for(teacher)
    names = ("student", "aux", "ema", "optimizer_student", "optimizer_aux")
    student_dir = assert_resumes_exactly(distill_dimo, cfg, tmp_path, names)
    logs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss_student" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in logs if "student_samples_logprob" in r] == [0, 2, 4]
    assert "teacher_samples_logprob" in logs[0]
    assert {p.name for p in (tmp_path / "a/samples").iterdir()} == {"teacher.png", "step-000002.png",
                                                                    "step-000004.png"}
    before = MaskedTransformer.from_pretrained(teacher["teacher"]).state_dict()
    after = MaskedTransformer.from_pretrained(student_dir).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something

    pipe = Pipeline.from_pretrained(student_dir)
    assert pipe.defaults.sampler == "one_step" and pipe.defaults.steps == 1
    images = pipe(["a red square", "a blue square"], n=2, seed=0)
    assert len(images) == 4 and images[0].size == (32, 32)
    # per-prompt random streams, as the server batches: a prompt's images do not depend on the batch
    solo = pipe.generate_tokens("a blue square", n=2, seed=5)
    both = pipe.generate_tokens(["a red square", "a blue square"], n=[1, 2], seed=[4, 5])
    assert torch.equal(both[1:], solo)
    guided = pipe.generate_tokens("a blue square", n=2, seed=5, guidance=2.0)
    assert guided.shape == solo.shape
    res = pipe.inpaint(images[0], "a green square", box=(0, 0, 16, 16), seed=1)
    assert res.images[0].size == (32, 32)
    with pytest.raises(ConfigError, match="takes exactly 1"):
        pipe("a red square", steps=4)
    with pytest.raises(ConfigError, match="noise"):
        pipe("a red square", noise=2.0)
    with TestClient(create_app(pipe, ServeSettings(model_name="student"))) as client:  # serving
        body = {"prompt": "a red square", "n": 2, "seed": 3, "size": "32x32", "response_format": "b64_json"}
        r = client.post("/v1/images/generations", json=body)
        assert r.status_code == 200, r.text
        served = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).tobytes() for d in r.json()["data"]]
        assert served == [im.tobytes() for im in pipe("a red square", n=2, seed=3)]
        r = client.post("/v1/images/generations", json={**body, "steps": 4})
        assert r.status_code == 400 and "exactly 1" in r.json()["error"]["message"]
    out = tmp_path / "g.png"
    assert main(["generate", "a red square", "--model", str(student_dir), "--init-mask-ratio", "0.3",
                 "-o", str(out)]) == 0 and out.is_file()
    assert main(["eval", "--model", str(student_dir), "--suite", "speed", "--steps", "12,6",
                 "--out", str(tmp_path / "eval")]) == 0
    row = (tmp_path / "eval/results.md").read_text().splitlines()[2]
    assert row.count("|") == 23 and row.rstrip(" |").endswith("| 1")  # one row, one network evaluation


def test_cli_and_bad_teachers(teacher, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg_for(teacher, steps=1, eval_every=1).save(cfg)
    assert main(["distill", "dimo", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run/student/sampler.json").is_file()
    assert main(["distill", "dimo", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 1
    assert "already holds a run" in capsys.readouterr().err
    ar = tiny_pipeline(tmp_path / "ar", autoregressive=True)
    assert main(["distill", "dimo", "--config", str(cfg), "--teacher", str(ar),
                 "--out", str(tmp_path / "x")]) == 1
    assert "masked" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="embed_noise"):
        DiMOConfig(embed_noise=1.5)
    with pytest.raises(ConfigError, match="teacher_temperature"):
        DiMOConfig(teacher_temperature=0.0)
    for bad in ((0.5, 0.5), (-0.1, 1.0), (0.2, 1.1), (0.5,)):
        for name in ("remask_ratios", "guidance_ratios"):
            with pytest.raises(ConfigError,
                               match=rf"{name} is .*; accepted: two numbers lo, hi with 0 <= lo < hi <= 1"):
                DiMOConfig(**{name: bad})


def test_frozen_parameters_keep_the_teachers_values(teacher, tmp_path):
    before = MaskedTransformer.from_pretrained(teacher["teacher"]).state_dict()
    run = distill_dimo(cfg_for(teacher, steps=2, frozen=("tok_emb", "head.bias")), tmp_path / "run")
    after = MaskedTransformer.from_pretrained(run).state_dict()
    assert torch.equal(before["tok_emb.weight"], after["tok_emb.weight"])
    assert torch.equal(before["head.bias"], after["head.bias"])
    assert not torch.equal(before["head.weight"], after["head.weight"])
    with pytest.raises(ConfigError, match="frozen names 'tok_embedding', which is no parameter"):
        distill_dimo(cfg_for(teacher, steps=1, frozen=("tok_embedding",)), tmp_path / "bad")


def test_teacher_target_guides_only_rows_with_masked_shares_in_the_range(teacher):
    """guidance_ratios (0.5, 1): the mostly masked row gets the guided logits, the mostly
    visible one the conditional logits alone; (0, 1) guides both (the old target)."""
    pipe = Pipeline.from_pretrained(teacher["teacher"])
    tm = pipe.transformer
    text = pipe.text_encoder.encode(["a red square", "a red square"])
    cond, uncond = tm.prepare_text(text), tm.prepare_text(pipe.text_encoder.encode(["", ""]))
    ctx = guidance_context(cond, uncond, 2.0)
    tokens = torch.randint(0, 16, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    tokens[0].view(-1)[:200] = tm.mask_id  # 78% masked
    tokens[1].view(-1)[:20] = tm.mask_id  # 8% masked
    with torch.no_grad():
        guided, plain = guided_logits(tm, tokens, ctx, 2.0), guided_logits(tm, tokens, cond, None)
        target = teacher_target(tm, tokens, ctx, 2.0, (0.5, 1.0), 0.5)
        everywhere = teacher_target(tm, tokens, ctx, 2.0, (0.0, 1.0), 1.0)
    assert not torch.allclose(guided, plain, atol=1e-3)
    assert torch.allclose(target[0], guided[0] / 0.5, atol=1e-4)
    assert torch.allclose(target[1], plain[1] / 0.5, atol=1e-4)
    assert torch.allclose(everywhere, guided, atol=1e-5)


def test_teacher_temperature_and_ratios_change_the_target(teacher, tmp_path):
    """The same run with the teacher's softmax sharpened, with the student's samples re-masked
    only at high ratios, or with the teacher guided only there, trains a different student."""
    changes = ({}, {"teacher_temperature": 0.5}, {"remask_ratios": (0.9, 1.0)},
               {"guidance_ratios": (0.9, 1.0)})
    states = [MaskedTransformer.from_pretrained(distill_dimo(cfg_for(teacher, steps=1, **change),
                                                             tmp_path / str(i))).state_dict()
              for i, change in enumerate(changes)]
    for other in states[1:]:
        assert any(not torch.equal(states[0][k], other[k]) for k in states[0])


def test_bf16_run_learns_and_scm_refuses_it(teacher, tmp_path):
    from fastmuse.distill.scm_train import SCMConfig

    student = distill_dimo(cfg_for(teacher, steps=2, mixed_precision="bf16"), tmp_path / "run")
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss_student"]) for r in logs if "loss_student" in r)
    before = MaskedTransformer.from_pretrained(teacher["teacher"]).state_dict()
    after = MaskedTransformer.from_pretrained(student).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(ConfigError, match="'mixed_precision' is 'bf16'; accepted: 'no'"):
        SCMConfig(mixed_precision="bf16")  # its JVP stays fp32


def test_converted_amused_teacher(teacher, tmp_path):
    """A public-weights model (tiny random aMUSEd saved by diffusers): convert, distil, generate."""
    from fastmuse.convert import convert_public
    from test_amused import amused_folder

    _, folder = amused_folder(tmp_path)
    with pytest.raises(ConfigError, match="convert it first"):
        distill_dimo(cfg_for(teacher, teacher=str(folder)), tmp_path / "raw")
    converted = convert_public(folder, tmp_path / "converted")
    parts = {**teacher, "teacher": str(converted), "cache_dir": str(tmp_path / "cache")}
    student = distill_dimo(cfg_for(parts, steps=2), tmp_path / "run")
    pipe = Pipeline.from_pretrained(student)
    assert type(pipe.transformer).__name__ == "UViT" and pipe.defaults.sampler == "one_step"
    assert pipe("red heart", n=2, seed=0)[1].size == (32, 32)
