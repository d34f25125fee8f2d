"""Cold start: models built without random initialisation load the same weights as before,
large files are hashed once per machine (and again when they change), int8 folders written by
`fastmuse convert --precision int8` load into exactly the modules quantization at load makes,
and `fastmuse bench --cold` times fresh processes."""

import json

import pytest
import torch
from torch import nn

from fastmuse import fsutil
from fastmuse.cli import main
from fastmuse.convert import convert_public
from fastmuse.errors import CheckpointError, ConfigError
from fastmuse.hub import no_init, verify
from fastmuse.int8 import QUANT_FILE, is_quantized
from fastmuse.models import MaskedTransformer
from fastmuse.pipeline import Pipeline
from helpers import tiny_pipeline


def test_no_init_draws_nothing_and_restores_init():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with no_init():
        nn.Sequential(nn.Linear(64, 64), nn.Embedding(10, 8), nn.Conv2d(3, 4, 3), nn.LayerNorm(4))
    assert torch.equal(torch.get_rng_state(), before)  # no random number was drawn
    nn.Linear(4, 4)
    assert not torch.equal(torch.get_rng_state(), before)  # init works again outside


def test_loaded_weights_equal_a_copying_load(tmp_path):
    """from_pretrained (no init, tensors assigned) == the plain way (init, then copy), also for
    weights stored fp16; the loaded model trains (parameters, fp32, requires_grad)."""
    folder = tiny_pipeline(tmp_path / "m")
    model = MaskedTransformer.from_pretrained(folder)
    model.save_pretrained(tmp_path / "half", dtype="fp16")
    for src in (folder, tmp_path / "half"):
        fast = MaskedTransformer.from_pretrained(src)
        plain = MaskedTransformer(fast.config)
        plain.load_state_dict(raw_weights(src))
        pairs = zip(fast.state_dict().values(), plain.state_dict().values(), strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
        assert all(p.dtype == torch.float32 and p.requires_grad and isinstance(p, nn.Parameter)
                   for p in fast.parameters())
    fast.train()
    fast(torch.randint(0, 8, (1, fast.config.grid, fast.config.grid)),
         fast.prepare_text(Pipeline.from_pretrained(folder).text_encoder.encode(["x"]))).sum().backward()
    assert all(p.grad is not None for p in fast.parameters() if p.requires_grad)


def raw_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_large_files_are_hashed_once_and_again_when_changed(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTMUSE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(fsutil, "REMEMBER_BYTES", 0)
    folder = tiny_pipeline(tmp_path / "m")
    calls = []
    hash_file = fsutil.sha256_file
    monkeypatch.setattr(fsutil, "sha256_file", lambda p: calls.append(p) or hash_file(p))
    verify(folder)
    first = len(calls)
    verify(folder)
    assert first > 0 and len(calls) == first  # remembered
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # same size, one bit
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        verify(folder)
    assert len(calls) == first + 1


def test_int8_folder_loads_what_quantizing_at_load_makes(tmp_path):
    src = tiny_pipeline(tmp_path / "m")
    out = convert_public(src, tmp_path / "int8", "int8")
    assert (out / QUANT_FILE).is_file() and "## int8" in (out / "README.md").read_text()
    stored = Pipeline.from_pretrained(out, precision="auto")  # auto: the folder can only be int8
    quantized = Pipeline.from_pretrained(src, precision="int8")
    assert stored.precision == "int8" and is_quantized(stored.transformer)
    assert [type(m) for m in stored.transformer.modules()] == \
        [type(m) for m in quantized.transformer.modules()]
    assert torch.equal(stored.generate_tokens(["a red square", "two blue stars"], n=2, seed=5),
                       quantized.generate_tokens(["a red square", "two blue stars"], n=2, seed=5))
    assert (out / "model.safetensors").stat().st_size < (src / "model.safetensors").stat().st_size
    again = convert_public(out, tmp_path / "again", "int8")  # an int8 folder converts to itself
    assert (again / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (again / "README.md").read_text().count("## int8") == 1
    for wrong in ("fp32", "bf16"):
        with pytest.raises(ConfigError, match=f"holds int8 weights .* not '{wrong}'"):
            Pipeline.from_pretrained(out, precision=wrong)
    with pytest.raises(ConfigError, match="the transformer holds int8 weights"):
        Pipeline(stored.transformer, stored.tokenizer, stored.text_encoder, precision="fp32")


def test_fp16_folder_holds_the_weights_rounded_to_half(tmp_path):
    src = tiny_pipeline(tmp_path / "m")
    assert main(["convert", str(src), str(tmp_path / "h"), "--precision", "fp16"]) == 0
    out = tmp_path / "h"
    from safetensors.torch import load_file

    stored = load_file(out / "model.safetensors")
    assert {t.dtype for t in stored.values() if t.is_floating_point()} == {torch.float16}
    assert (out / "model.safetensors").stat().st_size < 0.6 * (src / "model.safetensors").stat().st_size
    full, half = Pipeline.from_pretrained(src), Pipeline.from_pretrained(out)
    assert half.precision == full.precision
    for (name, a), b in zip(full.transformer.state_dict().items(), half.transformer.state_dict().values(),
                            strict=True):
        assert b.dtype == a.dtype and torch.equal(b, a.half().to(a.dtype)), name
    assert (out / "README.md").read_text() == (src / "README.md").read_text()


def test_int8_weights_that_do_not_fit_the_config(tmp_path):
    out = convert_public(tiny_pipeline(tmp_path / "m"), tmp_path / "int8", "int8")
    from fastmuse.hub import load_checkpoint, save_checkpoint
    from fastmuse.int8 import load_int8

    ckpt = load_checkpoint(out)
    state = ckpt.weights("model")
    name = next(k for k in state if k.endswith(".weight_scale")).removesuffix(".weight_scale")
    bad = state | {f"{name}.weight": state[f"{name}.weight"].float()}
    with pytest.raises(CheckpointError, match=f"int8 weight {name}.weight is torch.float32"):
        load_int8(MaskedTransformer.uninitialised(ckpt), bad, "here")
    cfg = MaskedTransformer.uninitialised(ckpt).config
    wide = type(cfg).from_dict(cfg.to_dict() | {"dim": cfg.dim * 2})
    save_checkpoint(tmp_path / "wide", wide, {"model": state}, {QUANT_FILE: (out / QUANT_FILE).read_bytes()})
    with pytest.raises(CheckpointError, match="weights do not match the config|has shape"):
        Pipeline.from_pretrained(tmp_path / "wide", text_encoder=Pipeline.from_pretrained(out).text_encoder)


def test_cli_convert_int8(tmp_path, capsys):
    src = tiny_pipeline(tmp_path / "m")
    assert main(["convert", str(src), str(tmp_path / "q"), "--precision", "int8"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["generate", "a red square", "--model", str(tmp_path / "q"), "-o", str(tmp_path / "a.png")]) \
        == 0
    assert main(["generate", "a red square", "--model", str(tmp_path / "q"), "--precision", "fp32",
                 "-o", str(tmp_path / "b.png")]) == 1
    assert "holds int8 weights" in capsys.readouterr().err and not (tmp_path / "b.png").exists()


def test_bench_cold_times_fresh_processes(tmp_path, capsys):
    """The real children run (diffusers and fastmuse), on a tiny aMUSEd folder put where the
    benchmark would write aMUSEd-256; the fastmuse folders are converted by the benchmark."""
    pytest.importorskip("diffusers")
    from test_amused import amused_folder

    _, folder = amused_folder(tmp_path / "src")
    work = tmp_path / "work"
    work.mkdir()
    folder.rename(work / "diffusers")
    out = tmp_path / "cold.json"
    assert main(["bench", "--cold", "--work", str(work), "--peers", "fp32", "--steps", "2",
                 "--repeats", "1", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| fastmuse int8, stored pre-quantized |" in text and "| whole process s |" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["row"] for r in rows] == [
        "diffusers AmusedPipeline fp32", "fastmuse auto (the default)", "fastmuse int8, stored pre-quantized",
        "fastmuse int8, quantized at load", "`fastmuse generate` (auto)"]
    assert all(r["process"] > r["import"] + r["load"] + r["image"] > 0 for r in rows[:-1])
    assert rows[-1]["process"] > 0 and "load" not in rows[-1]  # the command is timed whole
    assert (work / "fastmuse-int8" / QUANT_FILE).is_file()
