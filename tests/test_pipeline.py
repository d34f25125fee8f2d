"""Pipeline and `fastmuse generate`: images, determinism, text computed once, bad input."""

import pytest
import torch
from PIL import Image

from fastmuse.cli import main
from fastmuse.errors import CheckpointError, ConfigError
from fastmuse.models.transformer import Block
from fastmuse.pipeline import Pipeline
from helpers import tiny_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("pipe"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)


def test_images_and_defaults(pipe):
    assert pipe.defaults.steps == 3 and pipe.resolution == 32
    images = pipe(["a red square", "two blue stars"], n=2, seed=0)
    assert len(images) == 4 and all(isinstance(im, Image.Image) and im.size == (32, 32) for im in images)


def test_same_seed_same_images(pipe):
    a = pipe.generate_tokens("a red heart", n=2, seed=3)
    assert torch.equal(a, pipe.generate_tokens("a red heart", n=2, seed=3))
    assert not torch.equal(a, pipe.generate_tokens("a red heart", n=2, seed=4))


def test_text_keys_values_once_per_call(pipe, monkeypatch):
    calls = []
    original = Block.text_kv
    monkeypatch.setattr(Block, "text_kv", lambda self, t: calls.append(1) or original(self, t))
    pipe._uncond = None
    pipe("a red square", n=3, steps=5, guidance=2.0)
    assert len(calls) == 2 * 2  # depth 2 x (prompt + the empty prompt), not x steps


@pytest.mark.parametrize("kw, match", [
    ({"prompts": ""}, "empty"), ({"prompts": []}, "prompt"), ({"steps": 0}, "steps"),
    ({"guidance": -1.0}, "guidance"), ({"n": 0}, "n is"), ({"n": 65}, "n is"),
    ({"schedule": "zigzag"}, "schedule")])
def test_bad_input_named(pipe, kw, match):
    args = {"prompts": "a red square", **kw}
    with pytest.raises(ConfigError, match=match):
        pipe(**args)


def test_unknown_model_name():
    with pytest.raises(CheckpointError, match="bundled"):
        Pipeline.from_pretrained("no-such-model")


def test_cli_generate(model_dir, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "a red square", "a blue square", "--model", str(model_dir), "--n", "2",
                 "--steps", "2", "-o", str(out), "--out-dir", str(tmp_path / "each")]) == 0
    assert Image.open(out).size[0] > 64 and len(list((tmp_path / "each").glob("*.png"))) == 4
    assert "wrote 4 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["--steps", "0"], "steps"), (["--guidance", "-2"], "guidance"), (["--n", "0"], "--n"),
    (["--model", "nope"], "bundled"), ([], None)])
def test_cli_bad_input(model_dir, tmp_path, capsys, args, match):
    argv = ["generate", "a red square", "--model", str(model_dir), "-o", str(tmp_path / "x.png"), *args]
    if match is None:  # no output named
        argv = ["generate", "a red square", "--model", str(model_dir)]
        match = "--output"
    try:
        code = main(argv)
    except SystemExit as e:  # argparse rejects some values itself (exit 2)
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and match in err and "Traceback" not in err


def test_caption_rule_of_the_model_applies_to_prompts(pipe):
    """A model trained with canonical relation captions reads "A below B" as "B above A"; a
    shared encoder gets the rule without changing for its other users."""
    from fastmuse.models import MaskedTransformer

    model = MaskedTransformer(pipe.transformer.config.replace(caption_rule="canonical_relations"))
    model.load_state_dict(pipe.transformer.state_dict())
    canon = Pipeline(model, pipe.tokenizer, pipe.text_encoder, pipe.defaults)
    assert canon.text_encoder.caption_rule == "canonical_relations" and pipe.text_encoder.caption_rule == ""
    seen, tokenize = [], canon.text_encoder.tokenizer
    canon.text_encoder.tokenizer = lambda prompts, **kw: seen.extend(prompts) or tokenize(prompts, **kw)
    canon.generate_tokens("a red circle below a green heart", seed=1)
    assert "a green heart above a red circle" in seen and "a red circle below a green heart" not in seen
