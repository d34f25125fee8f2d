"""Evaluation: metric functions against known values, the shapes checker against ground truth,
and the suites end to end on a tiny model."""

import hashlib
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastmuse.cli import main
from fastmuse.data.images import to_tensor
from fastmuse.data.shapes import Obj, render_scene
from fastmuse.eval.distribution import fd, frechet_distance, kid, tf_resize
from fastmuse.eval.shapes_check import check, detect
from fastmuse.eval.shapes_suite import render_item, suite_items, validate_checker
from fastmuse.eval.suite import EvalSettings, emoji_entries, evaluate, table
from fastmuse.eval.tokenizer import evaluate_recon
from fastmuse.pipeline import Pipeline
from helpers import tiny_pipeline

# the prompts of suite "shapes-v1": a change here needs a new SUITE_VERSION
SUITE_SHA = "3c48ab113bc0dffb"


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 8))
    assert abs(fd(a, a)) < 1e-8
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 9.0])
    # diagonal covariances: |mu1 - mu2|^2 + sum (sigma1 - sigma2)^2 = 5 + 1 + 1 + 0
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(7.0)
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]  # the same in any basis
    assert frechet_distance(rot @ mu1, rot @ s1 @ rot.T, rot @ mu2, rot @ s2 @ rot.T) == pytest.approx(7.0)


def test_kid_unbiased_and_grows_with_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    assert abs(kid(a, b)) < 0.05 < kid(a, b + 1.0)


def test_tf_resize_keeps_constants():
    import torch

    x = torch.full((1, 3, 128, 128), 200.0)
    assert torch.allclose(tf_resize(x, 299), x.new_full((1, 3, 299, 299), 200.0))


def test_suite_is_pinned():
    items = suite_items()
    assert len(items) == 72 and len({it.prompt for it in items}) == 72
    digest = hashlib.sha256("\n".join(it.prompt for it in items).encode()).hexdigest()[:16]
    assert digest == SUITE_SHA


def test_checker_passes_ground_truth_and_rejects_wrong_prompts():
    items = suite_items()
    assert validate_checker(items, ["clean", "jpeg 75"])["clean"]["overall"] == 1.0
    # the suite's 128 px scenes drawn for a 64 px model: the same scenes, smaller
    assert validate_checker(items, ["clean"], resolution=64)["clean"]["overall"] == 1.0
    assert render_item(items[0], 128).tobytes() == render_scene(items[0].scene, 128).tobytes()
    wrong = 0
    for it in items:
        found = detect(render_scene(it.scene, 128))
        (s0, c0), *rest = it.spec.objects
        other = "red" if c0 != "red" else "blue"
        if it.spec.category in ("colour", "counting", "colour_attribution", "position"):
            assert not check(found, replace(it.spec, objects=((s0, other), *rest))), it.prompt
            wrong += 1
        if it.spec.category == "counting":
            assert not check(found, replace(it.spec, count=it.spec.count + 1)), it.prompt
        if it.spec.category == "position":
            flip = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
            assert not check(found, replace(it.spec, relation=flip[it.spec.relation])), it.prompt
        if it.spec.category == "single":
            missing = "star" if s0 != "star" else "heart"
            assert not check(found, replace(it.spec, objects=((missing, c0),))), it.prompt
    assert wrong == 48


def test_checker_counts_separate_objects():
    scene = suite_items()[0].scene
    circles = [Obj("circle", "red", (10, 10, 40, 40)), Obj("circle", "red", (70, 70, 100, 100))]
    two = replace(scene, objects=circles)
    found = detect(render_scene(two, 128))
    assert [(f.shape, f.color) for f in found] == [("circle", "red")] * 2


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("eval"))


def test_evaluate_end_to_end(model_dir, tmp_path, monkeypatch):
    from fastmuse.data import emoji

    val = [e for e in emoji.catalogue() if e.split == "val"][:3]
    train = [e for e in emoji.catalogue() if e.split == "train"][:7]
    monkeypatch.setattr(emoji, "catalogue", lambda: train + val)
    s = EvalSettings(seeds=1, steps=2, batch_sizes=(1, 2))
    r = evaluate(str(model_dir), ["shapes", "emoji", "speed", "tokenizer"], tmp_path / "run", s)
    assert r["shapes"]["images"] == 72 and 0 <= r["shapes"]["accuracy"]["overall"] <= 1
    assert r["emoji"]["real"] == 3 and r["emoji"]["fid"] > 0 and 0 <= r["emoji"]["retrieval_r1"] <= 1
    # in-distribution FD: as many training emoji as held-out ones, spread over the training list
    assert r["emoji"]["train"]["real"] == 3 and r["emoji"]["train"]["fid"] > 0
    assert [e.caption for e in emoji_entries("train")] == [train[k].caption for k in (0, 2, 4)]
    assert r["speed"]["network_evaluations"] == 4 and r["speed"]["by_batch"]["2"]["images_per_second"] > 0
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["shapes"]["accuracy"] == r["shapes"]["accuracy"]
    assert (tmp_path / "run" / "shapes.png").is_file() and (tmp_path / "run" / "emoji.png").is_file()
    # the tokenizer suite is the tokenizer's own evaluation on the held-out renders
    tok = Pipeline.from_pretrained(model_dir).tokenizer
    direct = evaluate_recon(tok, torch.stack([to_tensor(emoji.render(e, 32)) for e in val]))
    assert r["tokenizer"]["emoji_val"]["psnr"] == pytest.approx(direct["psnr"])
    assert r["tokenizer"]["codes_used"]["emoji_val"] == direct["codes_used"]
    assert r["tokenizer"]["shapes_scenes"]["images"] == 72 and (tmp_path / "run" / "tokenizer.png").is_file()
    row = table([r]).splitlines()[2]
    assert f"| {direct['psnr']:.2f} |" in row and row.count("|") == 23
    flat = r["tokenizer"]["flat"]
    assert set(flat["modal_share"]) == {"64", "128", "256"} and 0 < flat["min_modal_share"] <= 1
    assert row.endswith(f"| {flat['min_modal_share']:.3f} |")


def test_cli_eval(model_dir, tmp_path, capsys):
    assert main(["eval", "--model", str(model_dir), "--suite", "speed", "--steps", "2,1",
                 "--out", str(tmp_path), "--table", str(tmp_path / "t.md")]) == 0
    md = (tmp_path / "t.md").read_text()
    assert md.count("\n") == 4 and "| 2 |" in md and "| 1 |" in md
    assert main(["eval", "--model", str(model_dir), "--suite", "vibes", "--out", str(tmp_path)]) == 1
    assert "vibes" in capsys.readouterr().err
