"""The latent diffusion teacher through the shared trainer, export and Pipeline, and the DMD /
DMD2 distillation run on it: exact resume, student folders that every command loads, errors."""

import base64
import io
import json
import math

import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from fastmuse.cli import main
from fastmuse.distill.dmd_train import DMDConfig, distill_dmd
from fastmuse.errors import ConfigError
from fastmuse.hub import load_checkpoint
from fastmuse.models import DiT, DiTConfig
from fastmuse.pipeline import Pipeline
from fastmuse.serve.app import ServeSettings, create_app
from fastmuse.train.masked import TransformerTrainConfig, train_transformer
from helpers import assert_resumes_exactly, tiny_dataset, tiny_pipeline, tiny_text_encoder, tiny_tokenizer

PROMPTS = ("a red square", "a blue square")


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("dmd")
    return {"data": (str(tiny_dataset(root / "d", n=16, size=32)),), "cache_dir": str(root / "cache"),
            "text_encoder": str(tiny_text_encoder(root / "te")),
            "tokenizer": str(tiny_tokenizer(root / "tok")), "root": root}


def dit_cfg(parts, **kw) -> TransformerTrainConfig:
    model = DiTConfig(resolution=32, patch=2, dim=32, depth=2, heads=2)
    base = dict(model=model, data=parts["data"], repeats=(1,), text_encoder=parts["text_encoder"],
                tokenizer=parts["tokenizer"],
                cache_dir=parts["cache_dir"], batch_size=4, steps=4, warmup_steps=1, log_every=1,
                eval_every=2, save_every=2, sample_steps=2, sample_prompts=PROMPTS)
    return TransformerTrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher(parts):
    """A tiny DiT trained 4 steps by the shared trainer and exported with its card."""
    run = parts["root"] / "teacher-run"
    train_transformer(dit_cfg(parts), run)
    out = parts["root"] / "teacher"
    assert main(["transformer", "export", "--run", str(run), "--out", str(out), "--steps", "3", "--guidance",
                 "1.0", "--reproduce", "fastmuse train transformer --config a.json --out r"]) == 0
    return out


def test_teacher_trains_resumes_exports_and_generates(parts, teacher, tmp_path):
    cfg = dit_cfg(parts)
    train_transformer(cfg, tmp_path / "b", stop_at=2)
    train_transformer(cfg, tmp_path / "b", resume=True)
    wa, wb = (load_checkpoint(r / "checkpoints/step-000004").weights("model")
              for r in (parts["root"] / "teacher-run", tmp_path / "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    logs = [json.loads(x) for x in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "val_loss" in r] == [2, 4] and all("acc" not in r for r in logs)
    card = (teacher / "README.md").read_text()
    assert "flow loss" in card and "tau ~ N(-1.0, 1.4)" in card and "then cosine to x0.1" in card
    assert "make demo " in card and "--config a.json --out r\n```" in card  # the chain given, not NAME.json

    pipe = Pipeline.from_pretrained(teacher)
    c = pipe.transformer.config
    assert (c.grid, c.channels, pipe.resolution) == (16, 4, 32)  # the tiny tokenizer's 16 x 16 x 4 latent
    assert abs(c.latent_scale - parts_scale(parts)) < 1e-6
    assert pipe.defaults.sampler == "ode" and pipe.defaults.steps == 3
    assert pipe.network_evaluations(3, 1.0) == 10  # Heun: 2 x 3 - 1 evaluations, x2 for guidance
    images = pipe(list(PROMPTS), n=2, seed=0)
    assert len(images) == 4 and images[0].size == (32, 32)
    solo = pipe.generate_tokens("a blue square", n=2, seed=5)
    both = pipe.generate_tokens(list(PROMPTS), n=[1, 2], seed=[4, 5])
    # per-prompt streams, what the server's batching relies on (equal up to batch-size rounding)
    assert torch.allclose(both[1:], solo, atol=1e-5)
    assert not torch.equal(pipe.generate_tokens("a blue square", seed=5, solver="euler"), solo[:1])
    with pytest.raises(ConfigError, match="solver"):
        pipe("a red square", solver="rk4")
    with pytest.raises(ConfigError, match="masked token model"):
        pipe.inpaint(images[0], "a green square", box=(0, 0, 16, 16))
    with pytest.raises(ConfigError, match="does not apply"):
        pipe("a red square", temperature=0.5)


def parts_scale(parts) -> float:
    """What the trainer should have set: codebook vectors of the train tokens to std sigma_d."""
    from fastmuse.data.tokens import TokenData
    from fastmuse.tokenizer import VQTokenizer

    tokens = TokenData.load(next(p for p in (parts["root"] / "cache").iterdir())).train.tokens
    latents = VQTokenizer.from_pretrained(parts["tokenizer"]).quantize.lookup(tokens)
    return 0.5 / float(latents.double().std())


def dmd_cfg(parts, teacher, **kw) -> DMDConfig:
    base = dict(teacher=str(teacher), data=parts["data"], cache_dir=parts["cache_dir"], batch_size=2, steps=4,
                fake_updates=2, lr=1e-3, fake_lr=1e-3, warmup_steps=1, log_every=1, eval_every=2,
                save_every=2, regression_pairs=4, regression_batch=2, sample_prompts=PROMPTS)
    return DMDConfig(**{**base, **kw})


def test_dmd2_run_resumes_exactly_and_the_student_loads(parts, teacher, tmp_path):
    cfg = dmd_cfg(parts, teacher, student_steps=2)
    names = ("student", "fake", "head", "ema", "optimizer_student", "optimizer_fake")
    student_dir = assert_resumes_exactly(distill_dmd, cfg, tmp_path, names)
    logs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    assert {"loss_fake", "loss_disc", "loss_gan", "dm_grad_norm", "grad_norm"} <= set(logs[-1])
    assert {p.name for p in (tmp_path / "a/samples").iterdir()} == {"teacher.png", "step-000002.png",
                                                                    "step-000004.png"}
    before, after = DiT.from_pretrained(teacher).state_dict(), DiT.from_pretrained(student_dir).state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # it learned something

    pipe = Pipeline.from_pretrained(student_dir)
    assert pipe.defaults.sampler == "few_step" and pipe.defaults.steps == 2
    assert pipe.network_evaluations(2, 0.0) == 2
    assert len(pipe(list(PROMPTS), n=2, seed=0)) == 4 and pipe("a red square", steps=1)[0].size == (32, 32)
    with pytest.raises(ConfigError, match="2-step student takes 1, 2"):
        pipe("a red square", steps=4)
    with TestClient(create_app(pipe, ServeSettings(model_name="student"))) as client:  # serving
        body = {"prompt": "a red square", "n": 2, "seed": 3, "size": "32x32", "response_format": "b64_json"}
        r = client.post("/v1/images/generations", json=body)
        assert r.status_code == 200, r.text
        served = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).tobytes() for d in r.json()["data"]]
        assert served == [im.tobytes() for im in pipe("a red square", n=2, seed=3)]
        r = client.post("/v1/images/generations", json={**body, "steps": 3})
        assert r.status_code == 400 and "takes 1, 2" in r.json()["error"]["message"]
    assert main(["eval", "--model", str(student_dir), "--suite", "speed", "--steps", "12,6",
                 "--out", str(tmp_path / "eval")]) == 0
    row = (tmp_path / "eval/results.md").read_text().splitlines()[2]
    assert row.rstrip(" |").endswith("| 2")  # one row, two network evaluations


def test_dmd2_bf16_run_learns(parts, teacher, tmp_path):
    """Under bf16 autocast the losses stay finite, the student moves, and it differs from the
    same run in fp32 (the setting is used, not ignored)."""
    dirs = [distill_dmd(dmd_cfg(parts, teacher, steps=2, mixed_precision=p), tmp_path / p)
            for p in ("bf16", "no")]
    logs = [json.loads(x) for x in (tmp_path / "bf16/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r[k]) for r in logs for k in ("loss_fake", "loss_dm", "loss_gan"))
    before = DiT.from_pretrained(teacher).state_dict()
    bf16, fp32 = (DiT.from_pretrained(d).state_dict() for d in dirs)
    assert any(not torch.equal(before[k], bf16[k]) for k in before)
    assert any(not torch.equal(fp32[k], bf16[k]) for k in before)


def test_dmd1_regression_cli_and_bad_input(parts, teacher, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    dmd_cfg(parts, teacher, method="dmd", gan=False, steps=2, fake_updates=1).save(cfg)
    assert main(["distill", "dmd", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run/regression_pairs.safetensors").is_file()
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert "loss_regression" in logs[-1] and "loss_gan" not in logs[-1]
    assert Pipeline.from_pretrained(tmp_path / "run/student").defaults.steps == 1
    assert main(["distill", "dmd", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["distill", "dmd", "--config", str(cfg), "--out", str(tmp_path / "run"), "--resume",
                 "--method", "dmd2"]) == 1
    assert "method is 'dmd2', the run" in capsys.readouterr().err
    masked = tiny_pipeline(tmp_path / "masked")
    assert main(["distill", "dmd", "--config", str(cfg), "--teacher", str(masked),
                 "--out", str(tmp_path / "x")]) == 1
    assert "diffusion model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="one-step students"):
        DMDConfig(method="dmd", student_steps=4)
    with pytest.raises(ConfigError, match="student_steps"):
        DMDConfig(student_steps=5)


def test_student_init_starts_g_from_another_student(parts, teacher, tmp_path):
    first = distill_dmd(dmd_cfg(parts, teacher, gan=False, steps=2), tmp_path / "first")
    # lr 0: G (and its EMA, the saved student) stays where it started, the first run's student
    again = distill_dmd(dmd_cfg(parts, teacher, gan=False, steps=2, lr=0.0, student_init=str(first)),
                        tmp_path / "again")
    start, end = (DiT.from_pretrained(d).state_dict() for d in (first, again))
    assert all(torch.equal(start[k], end[k]) for k in start)
    assert any(not torch.equal(start[k], v) for k, v in DiT.from_pretrained(teacher).state_dict().items())
    deep = distill_dmd(dmd_cfg(parts, teacher, gan=False, steps=2, student_depth=4), tmp_path / "deep")
    assert DiT.from_pretrained(deep).config.depth == 4
    with pytest.raises(ConfigError, match="student_depth is 3; accepted: 0 .* multiple"):
        distill_dmd(dmd_cfg(parts, teacher, steps=2, student_depth=3), tmp_path / "odd")
    with pytest.raises(ConfigError, match="student_init .* is not a model of the student"):
        distill_dmd(dmd_cfg(parts, teacher, steps=2, student_depth=4, student_init=str(first)),
                    tmp_path / "wrong-depth")
    with pytest.raises(ConfigError, match="student_init .* is not a model of the student"):
        distill_dmd(dmd_cfg(parts, teacher, steps=2, student_init=str(tiny_pipeline(tmp_path / "masked"))),
                    tmp_path / "bad")


def test_frozen_student_parameters_keep_the_teachers_values(parts, teacher, tmp_path):
    before = DiT.from_pretrained(teacher).state_dict()
    run = distill_dmd(dmd_cfg(parts, teacher, gan=False, steps=2, frozen=("patch_in", "head.bias")),
                      tmp_path / "run")
    after = DiT.from_pretrained(run).state_dict()
    for name in ("patch_in.weight", "patch_in.bias", "head.bias"):
        assert torch.equal(before[name], after[name]), name
    assert not torch.equal(before["head.weight"], after["head.weight"])
    with pytest.raises(ConfigError, match="frozen names 'patch', which is no parameter"):
        distill_dmd(dmd_cfg(parts, teacher, steps=1, frozen=("patch",)), tmp_path / "bad")


def test_student_time_conditions_the_one_step_student(parts, teacher, tmp_path):
    """G is told its pure-noise input has time student_time: the run trains that map (its weights
    differ from the pi/2 run's) and the student folder samples at that time."""
    runs = {t: distill_dmd(dmd_cfg(parts, teacher, gan=False, steps=2, student_time=t), tmp_path / str(t))
            for t in (1.0, math.pi / 2)}
    pipe = Pipeline.from_pretrained(runs[1.0])
    assert pipe.defaults.times == [1.0] and Pipeline.from_pretrained(runs[math.pi / 2]).defaults.times is None
    a, b = (DiT.from_pretrained(d).state_dict() for d in runs.values())
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert len(pipe("a red square", n=2)) == 2
    for bad in (0.0, 1.6, "1.0"):
        with pytest.raises(ConfigError, match=r"student_time is .*; accepted: a TrigFlow time in \(0, pi/2"):
            DMDConfig(student_time=bad)
    with pytest.raises(ConfigError, match="student_time is 1.0: a time other than pi/2 is for one-step"):
        DMDConfig(student_time=1.0, student_steps=2)


@pytest.mark.parametrize("method", ["dmd", "dmd2"])
def test_a_run_creates_nothing_off_the_model_device(parts, teacher, tmp_path, method):
    """DMD (regression pairs) and DMD2 (GAN head, two student steps) under torch's default device
    "meta" (setup on the CPU by name): the same student as a plain run."""
    from test_device import default_device_meta

    extra = {"student_steps": 2} if method == "dmd2" else {}
    cfg = dmd_cfg(parts, teacher, method=method, steps=2, **extra)
    want = distill_dmd(cfg, tmp_path / "plain", device="cpu")
    with default_device_meta():
        got = distill_dmd(cfg, tmp_path / "meta", device="cpu")
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()
