"""Device correctness without a GPU: with torch's default device set to "meta", every tensor
that fastmuse creates without naming a device is a meta tensor, and mixing one with the
model's CPU tensors fails. Generation and every edit op must then still run: canvases, masks,
random draws and text contexts are all made on the model's device (what running on a GPU needs)."""

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from PIL import Image

from fastmuse.cli import main
from fastmuse.errors import ConfigError
from fastmuse.fast import resolve_device
from fastmuse.pipeline import Pipeline
from helpers import tiny_pipeline


@pytest.fixture(scope="module")
def pipes(tmp_path_factory):
    root = tmp_path_factory.mktemp("device")
    folders = {"masked": tiny_pipeline(root / "m"), "ar": tiny_pipeline(root / "ar", autoregressive=True)}
    return {"folder": folders["masked"], **{k: Pipeline.from_pretrained(f) for k, f in folders.items()}}


@contextmanager
def default_device_meta():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@pytest.mark.parametrize("kind", ["masked", "ar"])
def test_generation_creates_nothing_off_the_model_device(pipes, kind):
    pipe = pipes[kind]
    expected = pipe.generate_tokens(["a", "b"], n=[1, 2], seed=[5, 6])  # per-row streams (the server)
    with default_device_meta():
        got = pipe.generate_tokens(["a", "b"], n=[1, 2], seed=[5, 6])
        image = pipe.decode(got[:1])[0]
    assert torch.equal(got, expected) and image.size == (32, 32)


def test_every_edit_op_creates_nothing_off_the_model_device(pipes):
    pipe = pipes["masked"]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    ops = {"inpaint": lambda: pipe.inpaint(image, "a red square", box=(0, 0, 16, 16), seed=1),
           "outpaint": lambda: pipe.outpaint(image, "a red square", right=16, seed=1),
           "edit": lambda: pipe.edit(image, "a blue square", strength=0.3, iterations=2, seed=1),
           "img2img": lambda: pipe.img2img(image, "a blue square", strength=0.5, seed=1),
           "variations": lambda: pipe.variations(image, n=2, seed=1)}
    expected = {name: op().tokens for name, op in ops.items()}
    with default_device_meta():
        got = {name: op().tokens for name, op in ops.items()}
    for name in ops:
        assert torch.equal(got[name], expected[name]), name


def test_device_choice_and_errors(pipes):
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad, match in (("tpu", "accepted: cpu, cuda, cuda:N or auto"), ("cuda:x", "accepted: cpu")):
        with pytest.raises(ConfigError, match=match):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
    p = pipes["masked"]
    moved = Pipeline(p.transformer, p.tokenizer, p.text_encoder, p.defaults, device="cpu")
    assert moved.device == torch.device("cpu")
    assert torch.equal(moved.generate_tokens("a", seed=1), p.generate_tokens("a", seed=1))


def test_cli_device_errors(pipes, tmp_path, capsys):
    for device, match in (("tpu", "accepted: cpu, cuda, cuda:N or auto"),
                          *([] if torch.cuda.is_available() else [("cuda", "no CUDA GPU")])):
        assert main(["generate", "a", "--model", str(pipes["folder"]), "--device", device,
                     "-o", str(tmp_path / "x.png")]) == 1
        assert match in capsys.readouterr().err
    assert main(["generate", "a", "--model", str(pipes["folder"]), "--device", "cpu",
                 "-o", str(tmp_path / "x.png")]) == 0
