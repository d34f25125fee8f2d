"""Fast inference modes: int8 and bf16 agree with fp32 within their documented tolerance, the
exact ones (text keys/values once, guidance batched, guidance interval) equal the plain
computation, and
`fastmuse bench` prints and writes its side-by-side rows."""

import json

import pytest
import torch
from torch import nn

from fastmuse.cli import main
from fastmuse.errors import ConfigError
from fastmuse.eval.speed import Stopwatch
from fastmuse.fast import TOLERANCE
from fastmuse.int8 import quantize_int8
from fastmuse.pipeline import Pipeline
from fastmuse.sampling.maskgit import combine_guidance, guidance_context, guided_logits, maskgit_sample
from helpers import tiny_pipeline


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    return Pipeline.from_pretrained(tiny_pipeline(tmp_path_factory.mktemp("pipe")))


def contexts(pipe, prompts=("a red square", "two blue stars")):
    m = pipe.transformer
    return m, m.prepare_text(pipe.text_encoder.encode(list(prompts))), pipe.uncond().repeat(len(prompts))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want).norm() / want.norm())


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_precision_within_tolerance(pipe, precision):
    m, cond, _ = contexts(pipe)
    fast = Pipeline(m, pipe.tokenizer, pipe.text_encoder, pipe.defaults, precision=precision)
    tokens = torch.randint(0, m.config.codebook_size, (2, 4, 4))
    with torch.no_grad():
        want = m(tokens, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            got = fast.transformer(tokens, fast.transformer.prepare_text(pipe.text_encoder.encode(
                ["a red square", "two blue stars"])))
    err = relative_error(got, want)
    assert 0 < err < TOLERANCE[precision], err  # an approximation, and a close one
    images = fast(["a red square"], n=2, seed=0)  # the whole pipeline runs in the mode
    assert len(images) == 2 and images[0].size == (pipe.resolution,) * 2


def test_int8_quantizes_every_linear_of_a_copy(pipe):
    m = pipe.transformer
    q = quantize_int8(m)
    assert not any(type(x) is nn.Linear for x in q.modules())
    assert any(type(x) is nn.Linear for x in m.modules())  # the fp32 model is untouched
    assert q.dtype == torch.float32  # embeddings and norms stay float: the model's compute dtype


def test_sampling_stays_fp32_under_bf16(pipe):
    m, cond, uncond = contexts(pipe)
    tokens = torch.full((2, 4, 4), m.mask_id)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = guided_logits(m, tokens, guidance_context(cond, uncond, 2.0), 2.0)
    assert logits.dtype == torch.float32


def test_text_keys_values_once_and_batched_guidance_equal_the_plain_computation(pipe):
    m, cond, uncond = contexts(pipe)
    text = pipe.text_encoder.encode(["a red square", "two blue stars"])
    tokens = torch.randint(0, m.config.codebook_size + 1, (2, 4, 4))
    with torch.no_grad():
        assert torch.equal(m(tokens, text), m(tokens, m.prepare_text(text)))  # K/V once == per call
        batched = guided_logits(m, tokens, guidance_context(cond, uncond, 3.0), 3.0)
        apart = torch.cat([m(tokens, cond), m(tokens, uncond)]).view(4, 16, -1)
        halves = torch.cat([m(tokens[:1], cond.repeat([1, 0])), m(tokens[1:], cond.repeat([0, 1]))])
    # equal up to fp32 rounding: MKL's matmul is not batch-invariant, so any batch split into two
    # differs by as much (a few ulps); the guidance adds no error of its own
    assert (halves - m(tokens, cond)).abs().max() < 1e-6
    torch.testing.assert_close(batched, combine_guidance(apart, 3.0), rtol=0, atol=2e-6)


def test_guidance_interval(pipe):
    m, cond, uncond = contexts(pipe)
    start = torch.full((2, 4, 4), m.mask_id)
    rows = []  # (the random model's text barely moves its logits: a large guidance makes it count)
    m.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[0]))
    run = lambda **kw: maskgit_sample(m, start, cond, uncond, steps=4, guidance=500.0,  # noqa: E731
                                      generator=torch.Generator().manual_seed(0), **kw)
    full = run()
    assert rows == [4] * 4 and torch.equal(full, run(guidance_interval=(0.0, 1.0)))
    rows.clear()
    half = run(guidance_interval=(0.0, 0.5))
    assert rows == [4, 4, 2, 2]  # steps 0 and 1 guided: cond + uncond rows; then cond alone
    # no guided step is plain conditional sampling, draw for draw
    none = run(guidance_interval=(0.9, 1.0))
    assert torch.equal(none, maskgit_sample(m, start, cond, None, steps=4, guidance=0.0,
                                            generator=torch.Generator().manual_seed(0)))
    assert not torch.equal(half, none)
    m._forward_hooks.clear()
    assert pipe.network_evaluations(4, 3.0, (0.0, 0.5)) == 6 and pipe.network_evaluations(4, 3.0) == 8
    for bad in [(0.5, 0.5), (-0.1, 1.0), (0.0, 1.5), (0.3,)]:
        with pytest.raises(ConfigError, match="guidance_interval"):
            pipe("a red square", guidance_interval=bad)


def test_bad_precision(pipe):
    with pytest.raises(ConfigError, match="precision is 'int4'; accepted: auto, fp32, bf16, int8"):
        Pipeline(pipe.transformer, pipe.tokenizer, pipe.text_encoder, precision="int4")


def test_auto_precision_probes_once_per_machine(tmp_path, monkeypatch, capsys):
    """auto: bf16 on a GPU; on a CPU whichever the Linear probe found faster, measured once and
    cached per machine (the probe is not run again), fp32 where bf16 is not clearly faster."""
    from fastmuse import fast

    assert fast.check_precision("auto", "cuda") == "bf16" and fast.check_precision("auto", "meta") == "fp32"
    probe = fast.probe_linear
    monkeypatch.setenv("FASTMUSE_CACHE", str(tmp_path))
    for timings, choice in (((2.0, 1.0), "bf16"), ((2.0, 1.9), "fp32")):
        (tmp_path / "precision.json").unlink(missing_ok=True)
        monkeypatch.setattr(fast, "probe_linear", lambda t=timings: t)
        fast.cpu_precision.cache_clear()
        assert fast.check_precision("auto") == choice
        assert f"precision auto -> {choice}" in capsys.readouterr().err
        monkeypatch.setattr(fast, "probe_linear", lambda: pytest.fail("probed twice"))
        fast.cpu_precision.cache_clear()
        assert fast.check_precision("auto") == choice  # from the cache file
        cached = json.loads((tmp_path / "precision.json").read_text())
        assert cached[fast.machine_key()]["precision"] == choice
    fast.cpu_precision.cache_clear()
    fp32_ms, bf16_ms = probe(rows=64, dim=32, repeat=1)  # the real probe runs
    assert fp32_ms > 0 and bf16_ms > 0


def test_stopwatch_times_and_removes_its_hooks():
    lin = nn.Linear(4, 4)
    with Stopwatch({"lin": lin}) as watch:
        lin(torch.randn(2, 4))
    assert watch.seconds["lin"] > 0 and not lin._forward_hooks and not lin._forward_pre_hooks


def test_cli_generate_fast_flags(tmp_path, capsys):
    model = tiny_pipeline(tmp_path / "m")
    main(["generate", "a red square", "--model", str(model), "--precision", "int8",
          "--guidance-interval", "0,0.5", "-o", str(tmp_path / "x.png")])
    assert (tmp_path / "x.png").is_file()
    with pytest.raises(SystemExit):
        main(["generate", "x", "--model", str(model), "--guidance-interval", "0.5",
              "-o", str(tmp_path / "y.png")])
    assert "--guidance-interval must be LO,HI" in capsys.readouterr().err


def test_cli_bench(tmp_path, capsys):
    out = tmp_path / "bench.json"
    main(["bench", "--model", str(tiny_pipeline(tmp_path / "m")), "--modes", "fp32", "int8", "int8-cfg-half",
          "--n", "2", "--repeats", "1", "--guidance", "2", "--json", str(out)])
    text = capsys.readouterr().out
    assert "| fastmuse int8-cfg-half |" in text and "Where the time goes" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["fastmuse fp32", "fastmuse int8", "fastmuse int8-cfg-half"]
    assert rows[0]["token_agreement"] == 1.0 and rows[0]["psnr_db"] == float("inf")
    assert rows[2]["gflop"] < rows[1]["gflop"] == rows[0]["gflop"]  # half the steps skip the uncond rows
    assert rows[1]["weights_mib"] < rows[0]["weights_mib"]  # int8 weights
    assert all(r["seconds"] > 0 and r["transformer_per_step_s"] > 0 and r["mfu"] > 0 for r in rows)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_editing_runs_in_the_fast_modes(pipe, precision):
    fast = Pipeline(pipe.transformer, pipe.tokenizer, pipe.text_encoder, pipe.defaults, precision=precision)
    source = pipe("a red square", seed=1)[0]
    res = fast.inpaint(source, "a blue circle", box=(0, 0, 16, 16), guidance_interval=(0.0, 0.5))
    assert res.images[0].size == source.size
    assert fast.edit(source, "two blue stars", iterations=2).images[0].size == source.size


def test_cli_bench_refuses_what_it_cannot_measure(tmp_path, capsys):
    assert main(["bench", "--reference", "amused-256", "--quality"]) == 1
    assert "--quality runs the evaluation suite on a trained model" in capsys.readouterr().err
    assert main(["bench", "--model", str(tiny_pipeline(tmp_path / "ar", autoregressive=True))]) == 1
    assert "fastmuse bench times masked-token models" in capsys.readouterr().err


def test_cli_generate_refine(tmp_path, capsys):
    """--refine rounds change the image of a seed (they re-sample tokens); bad values are named."""
    from PIL import Image

    model = tiny_pipeline(tmp_path / "m")
    for name, extra in (("plain", []), ("refined", ["--refine", "2", "--refine-fraction", "0.5"])):
        assert main(["generate", "a red square", "--model", str(model), "--no-captions", *extra,
                     "-o", str(tmp_path / f"{name}.png")]) == 0
    plain, refined = (Image.open(tmp_path / f"{n}.png").tobytes() for n in ("plain", "refined"))
    assert plain != refined
    with pytest.raises(SystemExit):
        main(["generate", "x", "--model", str(model), "--refine", "-1", "-o", str(tmp_path / "y.png")])
    assert "--refine must be an integer >= 0" in capsys.readouterr().err
    assert main(["generate", "x", "--model", str(model), "--refine", "1", "--refine-fraction", "2",
                 "-o", str(tmp_path / "y.png")]) == 1
    assert "refine_fraction is 2.0; accepted: 0 < refine_fraction <= 1" in capsys.readouterr().err
