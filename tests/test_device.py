"""Device correctness without a GPU: with torch's default device set to "meta", every tensor
that fastmuse creates without naming a device is a meta tensor, and mixing one with the
model's CPU tensors fails. Generation, every edit op and a transformer training run must then
still run: canvases, masks, random draws, batches and text contexts are all made on the model's
device (what running on a GPU needs)."""

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
    assert torch.equal(p.to("cpu").generate_tokens("a", seed=1), p.generate_tokens("a", seed=1))
    assert p.to("cpu").defaults == p.defaults and p.to("cpu").precision == p.precision


def test_cli_device_errors(pipes, tmp_path, capsys):
    for device, match in (("tpu", "accepted: cpu, cuda, cuda:N or auto"),
                          *([] if torch.cuda.is_available() else [("cuda", "no CUDA GPU")])):
        assert main(["generate", "a", "--model", str(pipes["folder"]), "--device", device,
                     "-o", str(tmp_path / "x.png")]) == 1
        assert match in capsys.readouterr().err
    assert main(["generate", "a", "--model", str(pipes["folder"]), "--device", "cpu",
                 "-o", str(tmp_path / "x.png")]) == 0
    assert main(["bench", "--model", str(pipes["folder"]), "--device", "tpu"]) == 1
    assert "accepted: cpu, cuda, cuda:N or auto" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["masked", "ar", "dit"])
def test_a_training_run_creates_nothing_off_the_model_device(tmp_path, family):
    """The transformer trainer (setup on the CPU, by name) runs its steps, held-out eval, sample
    grid and checkpoint with torch's default device "meta", and trains what it trains without
    it: the same weights."""
    from fastmuse.models import ARTransformerConfig, DiTConfig, MaskedTransformerConfig
    from fastmuse.train.masked import TransformerTrainConfig, train_transformer
    from helpers import tiny_dataset, tiny_text_encoder, tiny_tokenizer

    model = {"masked": MaskedTransformerConfig(dim=32, depth=2, heads=2, resolution=32),
             "ar": ARTransformerConfig(dim=32, depth=2, heads=2, resolution=32),
             "dit": DiTConfig(resolution=32, patch=2, dim=32, depth=2, heads=2)}[family]
    cfg = TransformerTrainConfig(
        model=model, data=(str(tiny_dataset(tmp_path / "d", n=12, size=32)),), repeats=(1,),
        tokenizer=str(tiny_tokenizer(tmp_path / "tok")), text_encoder=str(tiny_text_encoder(tmp_path / "te")),
        cache_dir=str(tmp_path / "cache"), batch_size=4, steps=2, warmup_steps=1, log_every=1, eval_every=2,
        save_every=2, sample_steps=2, sample_prompts=("a red square",))
    want = train_transformer(cfg, tmp_path / "plain")
    with default_device_meta():
        got = train_transformer(cfg, tmp_path / "meta")
    assert (got.parent / "samples/step-000002.png").is_file()
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()


def test_gpu_check_script_runs_here(tmp_path):
    """benchmarks/gpu_check.sh at toy sizes on the CPU: every section runs and reports."""
    import json
    import subprocess

    pytest.importorskip("diffusers")
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    done = subprocess.run(["bash", str(script), "--device", "cpu", "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    for section in ("reference", "bundled", "train", "serve"):
        assert "error" not in result[section], result[section]
    assert result["reference"]["logits_fp32_max_abs_diff_vs_diffusers"] < 1e-4
    # a difference of two wall-clock runs: its sign is noise on a busy machine, its type is not
    assert result["serve"]["status"] == 200 and isinstance(result["train"]["s_per_step"], float)
    assert (tmp_path / "bundled.png").is_file()


def test_a_dimo_run_creates_nothing_off_the_model_device(tmp_path):
    """The Di[M]O distiller (setup on the CPU, by name) under default device "meta": the same
    student as a plain run."""
    from fastmuse.distill.dimo_train import DiMOConfig, distill_dimo
    from helpers import tiny_dataset

    data = str(tiny_dataset(tmp_path / "d", n=12, size=32))
    cfg = DiMOConfig(teacher=str(tiny_pipeline(tmp_path / "t")), data=(data,),
                     cache_dir=str(tmp_path / "cache"), batch_size=3, steps=2, aux_updates=1, warmup_steps=1,
                     log_every=1, eval_every=2, save_every=2, sample_prompts=("a red square",))
    want = distill_dimo(cfg, tmp_path / "plain", device="cpu")
    with default_device_meta():
        got = distill_dimo(cfg, tmp_path / "meta", device="cpu")
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()


def test_a_server_request_creates_nothing_off_the_model_device(pipes, monkeypatch):
    """Both threads of `fastmuse serve` under default device "meta" (it is per thread): the
    request handlers in the event loop and the batcher that runs the model. A generation and an
    inpainting request answer what the library gives."""
    import base64
    import io

    from fastapi.testclient import TestClient

    from fastmuse.serve import ServeSettings, create_app
    from fastmuse.serve.batcher import Batcher
    from helpers import png

    work = Batcher._work

    def work_on_meta(self) -> None:
        with default_device_meta():
            work(self)

    monkeypatch.setattr(Batcher, "_work", work_on_meta)
    app = create_app(pipes["masked"], ServeSettings(model_name="tiny"))

    async def handlers_on_meta(scope, receive, send) -> None:
        with default_device_meta():
            await app(scope, receive, send)

    source = Image.new("RGB", (32, 32), "red")
    mask = Image.new("RGBA", (32, 32), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (8, 8, 24, 24))
    with TestClient(handlers_on_meta) as client:
        gen = client.post("/v1/images/generations", json={"prompt": "a red square", "n": 2, "seed": 3,
                                                          "response_format": "b64_json"})
        edit = client.post("/v1/images/edits", data={"prompt": "a blue square", "seed": "1"},
                           files={"image": ("a.png", png(source)), "mask": ("m.png", png(mask))})
    assert gen.status_code == 200 and edit.status_code == 200, (gen.text, edit.text)
    decoded = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in gen.json()["data"]]
    want = pipes["masked"]("a red square", n=2, seed=3)
    assert [im.tobytes() for im in decoded] == [im.tobytes() for im in want]
    # the same edit request without meta anywhere: the same image
    with TestClient(create_app(pipes["masked"], ServeSettings(model_name="tiny"))) as client:
        plain = client.post("/v1/images/edits", data={"prompt": "a blue square", "seed": "1"},
                            files={"image": ("a.png", png(source)), "mask": ("m.png", png(mask))})
    assert plain.json()["data"][0]["b64_json"] == edit.json()["data"][0]["b64_json"]
