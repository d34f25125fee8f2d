"""The bundled text-to-image model loads by name, offline, and draws what it is asked for."""

import math
from collections import Counter

import numpy as np
import pytest

from fastmuse.data.shapes import nearest_colour
from fastmuse.distill.scm import MID_TIME
from fastmuse.errors import ConfigError
from fastmuse.hub import bundled_models, load_checkpoint
from fastmuse.pipeline import Pipeline
from fastmuse.sampling.trigflow import student_times

NAME = "muse-128"


@pytest.fixture(scope="module")
def pipe():
    return Pipeline.from_pretrained(NAME)


def test_bundled_and_verified():
    assert NAME in bundled_models()
    ckpt = load_checkpoint(NAME)  # sha256 of every file against the manifest
    assert {"README.md", "sampler.json", "grid.png", "eval.json"} <= set(ckpt.files)


def dominant_colour(image) -> str:
    pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).tolist()
    counts = Counter(nearest_colour(tuple(px)) for px in pixels)
    counts.pop("white", None)
    return counts.most_common(1)[0][0]


@pytest.mark.parametrize("colour", ["red", "blue", "yellow", "green"])
def test_colour_follows_the_prompt(pipe, colour):
    images = pipe(f"a {colour} circle", n=2, seed=0)
    assert all(im.size == (128, 128) for im in images)
    assert [dominant_colour(im) for im in images] == [colour, colour]


def test_autoregressive_baseline_bundled():
    """ar-128, the evaluation suite's autoregressive baseline, loads verified and follows the
    colour of a prompt too."""
    ckpt = load_checkpoint("ar-128")
    assert {"README.md", "sampler.json", "grid.png", "eval.json"} <= set(ckpt.files)
    ar = Pipeline.from_pretrained("ar-128")
    assert ar.defaults.steps == 256
    images = ar("a blue circle", n=2, seed=0)
    assert [dominant_colour(im) for im in images] == ["blue", "blue"]


def assert_draws_colours(pipe: Pipeline) -> None:
    """"a COLOUR circle" gives that colour in at least 3 of 4 images, for 4 colours."""
    for colour in ("red", "blue", "yellow", "green"):
        found = [dominant_colour(im) for im in pipe(f"a {colour} circle", n=4, seed=0)]
        assert found.count(colour) >= 3, (colour, found)


def test_one_step_student_bundled():
    """dimo-128, the Di[M]O student of muse-128, loads verified, takes one step and follows the
    colour of a prompt in at least 3 of 4 images (its speckle sometimes outvotes a blue blob
    with purple)."""
    ckpt = load_checkpoint("dimo-128")
    assert {"README.md", "sampler.json", "grid.png", "metrics.jsonl"} <= set(ckpt.files)
    student = Pipeline.from_pretrained("dimo-128")
    assert student.defaults.sampler == "one_step" and student.defaults.steps == 1
    assert_draws_colours(student)


def test_generate_fast_picks_the_one_step_model(tmp_path, capsys):
    from fastmuse.cli import main
    assert main(["generate", "a red circle", "--fast", "-o", str(tmp_path / "a.png")]) == 0
    assert "dimo-128" in capsys.readouterr().out and (tmp_path / "a.png").exists()
    assert main(["generate", "x", "--fast", "--model", "ar-128", "-o", str(tmp_path / "b.png")]) == 1
    assert "--fast" in capsys.readouterr().err


def test_diffusion_teacher_and_dmd2_student_bundled():
    """dit-128 (Heun ODE, 16 steps with guidance: 62 network passes) and its one-step DMD2
    student both draw the colour asked for; the student takes 1 step and nothing else."""
    for name in ("dit-128", "dmd2-128"):
        assert {"README.md", "sampler.json", "grid.png", "metrics.jsonl"} <= set(load_checkpoint(name).files)
    teacher, student = Pipeline.from_pretrained("dit-128"), Pipeline.from_pretrained("dmd2-128")
    assert teacher.defaults.sampler == "ode" and teacher.network_evaluations(12, 1.0) == 46
    assert teacher.network_evaluations(teacher.defaults.steps, teacher.defaults.guidance) == 62
    for colour in ("blue", "red"):
        assert [dominant_colour(im) for im in teacher(f"a {colour} circle", n=2, seed=0)] == [colour] * 2
    assert student.defaults.sampler == "few_step" and student.network_evaluations(1, 0.0) == 1
    assert_draws_colours(student)
    assert teacher("a red circle", steps=2)[0].size == student("a red circle")[0].size == (128, 128)
    with pytest.raises(ConfigError, match="1-step student takes 1"):
        student("a red circle", steps=4)


@pytest.mark.parametrize("name, second", [("scd-128", MID_TIME), ("dmd2-2step-128", math.pi / 4)])
def test_two_step_students_bundled(name, second):
    """scd-128 (sCD: second pass at MID_TIME) and dmd2-2step-128 (DMD2: at pi/4, its training
    schedule) sample in 2 network passes and draw the colour asked for."""
    assert {"README.md", "sampler.json", "grid.png", "metrics.jsonl"} <= set(load_checkpoint(name).files)
    student = Pipeline.from_pretrained(name)
    times = student.defaults.times or student_times(student.defaults.steps)
    assert student.defaults.sampler == "few_step" and times == pytest.approx([math.pi / 2, second])
    assert student.network_evaluations(student.defaults.steps, 0.0) == 2
    assert_draws_colours(student)
    assert student("a red circle", steps=1)[0].size == (128, 128)


def test_two_stage_chain_bundled():
    """muse-64 -> muse-sr-128: 128 px images that keep the colour the base drew; the chains the
    bundled models allow are listed when a wrong one is asked for."""
    for name in ("muse-64", "muse-sr-128"):
        assert {"README.md", "sampler.json", "grid.png", "eval.json"} <= set(load_checkpoint(name).files)
    pipe = Pipeline.from_stages(["muse-64", "muse-sr-128"])
    images = pipe("a blue circle", n=2, seed=0)
    assert [im.size for im in images] == [(128, 128)] * 2
    assert [dominant_colour(im) for im in images] == ["blue", "blue"]
    with pytest.raises(ConfigError, match="Supported: muse-64 muse-sr-128"):
        Pipeline.from_stages(["muse-128", "muse-sr-128"])
    with pytest.raises(ConfigError, match="super-resolution stage"):
        Pipeline.from_pretrained("muse-sr-128")("a blue circle")


def test_score_micro_condition_steers_colourfulness():
    """muse-64's `score` is colourfulness: asking for 120 gives more colourful images than 0."""
    from fastmuse.data.images import to_tensor
    from fastmuse.data.tokens import colourfulness

    base = Pipeline.from_pretrained("muse-64")

    def mean_score(score):
        images = base(["red heart", "pizza"], n=4, seed=0, micro={"score": score})
        return np.mean([colourfulness(to_tensor(im)) for im in images])

    assert mean_score(120) > mean_score(0) + 15
