"""The sCM run on the tiny latent diffusion teacher: exact resume, the metrics that make
instability visible, the non-finite guard, a student folder that samples in 1 or 2 steps,
errors."""

import json
from functools import partial

import pytest
import torch

from fastmuse.cli import main
from fastmuse.distill import scm_train
from fastmuse.distill.scm import MID_TIME, TangentDrift
from fastmuse.distill.scm_train import SCMConfig, distill_scm
from fastmuse.errors import ConfigError, FastMuseError
from fastmuse.models import DiT
from fastmuse.pipeline import Pipeline
from helpers import assert_resumes_exactly, tiny_pipeline
from test_dmd_train import PROMPTS, parts, teacher  # noqa: F401 - the module's fixtures


def scm_cfg(parts, teacher, **kw) -> SCMConfig:  # noqa: F811
    base = dict(teacher=str(teacher), data=parts["data"], cache_dir=parts["cache_dir"], batch_size=2, steps=4,
                lr=1e-3, warmup_steps=1, tangent_warmup=2, log_every=1, eval_every=2, save_every=2,
                sample_prompts=PROMPTS)
    return SCMConfig(**{**base, **kw})


def test_scd_run_resumes_exactly_and_the_student_samples_in_one_or_two_steps(parts, teacher, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    monkeypatch.setattr(scm_train, "TangentDrift", partial(TangentDrift, window=1))
    cfg = scm_cfg(parts, teacher, drift_span=1)
    names = ("student", "weight", "ema", "optimizer_student", "optimizer_weight")
    student_dir = assert_resumes_exactly(distill_scm, cfg, tmp_path, names)
    logs, resumed = ([json.loads(x) for x in (tmp_path / f"{r}/metrics.jsonl").read_text().splitlines()]
                     for r in "ab")
    assert [r["step"] for r in logs] == [1, 2, 3, 4]
    # the drift ratio: step 3 (after the 2-step warm-up) sets the level, step 4 is compared with
    # it; the resumed run rebuilt the level from its log
    assert "tangent_drift" not in logs[2] and logs[3]["tangent_drift"] > 0
    assert resumed[3]["tangent_drift"] == logs[3]["tangent_drift"]
    assert {"loss", "loss_mse", "tangent_norm", "tangent_max", "grad_norm", "skipped"} <= set(logs[-1])
    assert [r["ramp"] for r in logs] == [0.0, 0.5, 1.0, 1.0]  # the tangent warm-up
    assert "sCD" in (student_dir / "README.md").read_text()

    pipe = Pipeline.from_pretrained(student_dir)
    assert pipe.defaults.sampler == "few_step" and pipe.defaults.steps == 2
    assert pipe.defaults.times[1] == MID_TIME and pipe.network_evaluations(2, 0.0) == 2
    two = pipe.generate_tokens("a red square", seed=0)
    one = pipe.generate_tokens("a red square", seed=0, steps=1)
    assert two.shape == one.shape and not torch.allclose(two, one)
    assert pipe("a red square", steps=1)[0].size == (32, 32)
    with pytest.raises(ConfigError, match="2-step student takes 1, 2"):
        pipe("a red square", steps=3)
    assert main(["eval", "--model", str(student_dir), "--suite", "speed", "--steps", "12",
                 "--student-steps", "1,2,4", "--out", str(tmp_path / "eval")]) == 0
    rows = (tmp_path / "eval/results.md").read_text().splitlines()[2:]
    assert [r.rstrip(" |").rsplit("| ", 1)[1] for r in rows] == ["1", "2"]  # network evaluations


def test_sct_cli_guard_and_bad_input(parts, teacher, tmp_path, capsys, monkeypatch):  # noqa: F811
    cfg = tmp_path / "c.json"
    scm_cfg(parts, teacher, steps=2, adaptive_weight=False).save(cfg)
    assert main(["distill", "scm", "--config", str(cfg), "--mode", "sct", "--student-steps", "1",
                 "--out", str(tmp_path / "run")]) == 0
    one_step = Pipeline.from_pretrained(tmp_path / "run/student")
    assert one_step.defaults.steps == 1 and one_step.defaults.student_steps() == [1, 2]
    assert "sCT" in (tmp_path / "run/student/README.md").read_text()
    assert main(["distill", "scm", "--config", str(cfg), "--out", str(tmp_path / "run"), "--resume",
                 "--mode", "scd"]) == 1
    assert "mode is 'scd', the run" in capsys.readouterr().err
    masked = tiny_pipeline(tmp_path / "masked")
    assert main(["distill", "scm", "--config", str(cfg), "--teacher", str(masked),
                 "--out", str(tmp_path / "x")]) == 1
    assert "diffusion model" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="student_steps"):
        SCMConfig(student_steps=4)

    # non-finite losses: skipped and logged, and the run stops after max_bad_steps in a row
    real = scm_train.scm_loss
    calls = []

    def flaky(*args, **kw):
        loss, logs = real(*args, **kw)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 2 else loss), logs

    monkeypatch.setattr(scm_train, "scm_loss", flaky)
    with pytest.raises(FastMuseError, match="NaN/Inf 2 steps in a row"):
        distill_scm(scm_cfg(parts, teacher, max_bad_steps=2, log_every=10), tmp_path / "nan")
    logs = [json.loads(x) for x in (tmp_path / "nan/metrics.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in logs] == [1] and logs[0]["step"] == 2


def test_frozen_student_parameters_keep_the_teachers_values(parts, teacher, tmp_path):  # noqa: F811
    before = DiT.from_pretrained(teacher).state_dict()
    run = distill_scm(scm_cfg(parts, teacher, steps=2, frozen=("patch_in", "head.bias")), tmp_path / "run")
    after = DiT.from_pretrained(run).state_dict()
    assert all(torch.equal(before[k], after[k]) for k in ("patch_in.weight", "head.bias"))
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_a_run_creates_nothing_off_the_model_device(parts, teacher, tmp_path):  # noqa: F811
    """sCD under torch's default device "meta" (setup on the CPU by name, the adaptive weight
    initialised on the CPU): the same student as a plain run."""
    from test_device import default_device_meta

    cfg = scm_cfg(parts, teacher, steps=2)
    want = distill_scm(cfg, tmp_path / "plain", device="cpu")
    with default_device_meta():
        got = distill_scm(cfg, tmp_path / "meta", device="cpu")
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()
