"""Zero-shot editing: what is kept is bit-identical, sizes map back, seeds reproduce, bad input."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from fastmuse.cli import main
from fastmuse.editing import box_mask, fit_scale, read_mask, scaled_size, token_mask
from fastmuse.errors import ConfigError, DataError
from fastmuse.pipeline import Pipeline
from fastmuse.sampling.windows import fill_windows, window_starts
from helpers import tiny_pipeline

PROMPT = "a red heart"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("edit"))


@pytest.fixture(scope="module")
def pipe(model_dir):
    return Pipeline.from_pretrained(model_dir)  # 32 px, 16x16 tokens of 2x2 px


def picture(w: int = 32, h: int = 32, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_inpaint_keeps_every_token_outside_the_mask(pipe):
    res = pipe.inpaint(picture(), PROMPT, box=(8, 4, 20, 15), n=2, seed=1)
    keep = ~res.mask
    assert torch.equal(res.tokens[keep], res.source.expand(2, -1, -1)[keep])
    # the patch-touching rule: x 8..19 -> tokens 4..9, y 4..14 -> tokens 2..7
    expected = torch.zeros(16, 16, dtype=torch.bool)
    expected[2:8, 4:10] = True
    assert torch.equal(res.mask[0], expected) and (res.tokens != pipe.transformer.mask_id).all()


def test_blend_keeps_pixels_outside_the_mask(pipe):
    image = picture(45, 37)
    mask = np.zeros((37, 45), bool)
    mask[10:30, 5:25] = True
    res = pipe.inpaint(image, PROMPT, mask=mask, seed=0)
    out, src = np.asarray(res.images[0]), np.asarray(image)
    assert res.images[0].size == (45, 37)
    assert np.array_equal(out[~mask], src[~mask]) and not np.array_equal(out[mask], src[mask])
    raw = pipe.inpaint(image, PROMPT, mask=mask, seed=0, blend=False)
    assert not np.array_equal(np.asarray(raw.images[0])[~mask], src[~mask])  # decoded, not pasted


def test_full_mask_equals_plain_generation(pipe):
    res = pipe.inpaint(picture(), PROMPT, box=(0, 0, 32, 32), n=2, seed=5)
    assert torch.equal(res.tokens, pipe.generate_tokens(PROMPT, n=2, seed=5))


def test_same_seed_same_edit(pipe):
    for op in (lambda s: pipe.inpaint(picture(), PROMPT, box=(0, 0, 16, 16), seed=s),
               lambda s: pipe.edit(picture(), PROMPT, strength=0.3, iterations=2, seed=s),
               lambda s: pipe.img2img(picture(), PROMPT, seed=s)):
        a = op(3)
        assert torch.equal(a.tokens, op(3).tokens) and not torch.equal(a.tokens, op(4).tokens)
        assert np.array_equal(np.asarray(a.images[0]), np.asarray(op(3).images[0]))


@pytest.mark.parametrize("op", ["edit", "img2img", "variations"])
def test_strength_zero_returns_the_source(pipe, op):
    res = getattr(pipe, op)(picture(40, 32), strength=0.0, n=2,
                            **({} if op == "variations" else {"prompt": PROMPT}))
    assert torch.equal(res.tokens, res.source.expand(2, -1, -1)) and not res.mask.any()
    assert all(im.size == (40, 32) for im in res.images)


@pytest.mark.parametrize("op", ["edit", "img2img", "variations"])
def test_resampling_changes_only_what_it_masked(pipe, op):
    res = getattr(pipe, op)(picture(), strength=0.25, n=2, **({} if op == "variations" else
                                                              {"prompt": PROMPT}))
    assert res.mask.sum(dim=(1, 2)).min() >= round(0.25 * 256)
    changed = res.tokens != res.source
    assert changed.any() and not (changed & ~res.mask).any()


def test_edit_remasks_the_least_likely_tokens(pipe, monkeypatch):
    # force the score: only the top-left quarter is "unlikely", so only it may change
    def fake(self, run, tokens):
        score = torch.zeros(tokens.shape)
        score[:, :8, :8] = -10.0
        return score

    monkeypatch.setattr(Pipeline, "_confidence", fake)
    res = pipe.edit(picture(), PROMPT, strength=0.25, iterations=2)
    expected = torch.zeros(1, 16, 16, dtype=torch.bool)
    expected[:, :8, :8] = True
    assert torch.equal(res.mask, expected)


def test_outpaint_sizes_and_kept_region(pipe):
    res = pipe.outpaint(picture(32, 32), PROMPT, right=40, bottom=6, n=2)
    assert all(im.size == (72, 38) for im in res.images)
    assert res.tokens.shape == (2, 19, 36)  # scale 1: 72x38 px, rounded to 2-px tokens
    keep = ~res.mask
    assert torch.equal(res.tokens[keep], res.source.expand(2, -1, -1)[keep])
    assert res.mask[0, :16, :16].sum() == 0 and res.mask[0, :, 16:].all()
    assert np.array_equal(np.asarray(res.images[0])[:32, :32], np.asarray(picture()))


def test_outpaint_small_image_is_scaled_to_the_model(pipe):
    res = pipe.outpaint(picture(8, 8), PROMPT, left=4, right=4, top=4, bottom=4)
    assert res.images[0].size == (16, 16) and res.tokens.shape == (1, 16, 16)  # canvas scaled x2
    assert res.mask[0, 4:12, 4:12].sum() == 0 and res.mask[0].sum() == 256 - 64


def test_windows_cover_and_fill_in_context():
    assert window_starts(16, 16) == [0] and window_starts(40, 16) == [0, 8, 16, 24]
    assert window_starts(21, 16) == [0, 5]
    tokens = torch.full((1, 16, 40), 9)
    tokens[:, :, 16:] = 99  # MASK
    seen = []

    def sample(window):
        seen.append(((window == 99).sum().item(), tuple(window.shape)))
        return torch.where(window == 99, 7, window)

    out = fill_windows(sample, tokens, 99, 16, progress=False)
    assert (out[:, :, 16:] == 7).all() and (out[:, :, :16] == 9).all()
    assert all(shape == (1, 16, 16) for _, shape in seen)
    assert seen[0][0] == 128  # first the window half full of known tokens


def test_mask_rules():
    m = np.zeros((32, 32), bool)
    m[5, 5] = True
    t = token_mask(m, (32, 32), 2)
    assert t.sum() == 1 and t[2, 2]
    assert token_mask(m, (32, 32), 2, dilate=1).sum() == 9
    assert token_mask(m, (64, 64), 2).sum() == 1  # a 1-px mask scaled x2 touches one 2-px token
    grey = Image.fromarray(np.array([[0, 127], [128, 255]], np.uint8))
    assert read_mask(grey, (2, 2)).tolist() == [[False, False], [True, True]]
    rgba = Image.new("RGBA", (2, 2), (255, 255, 255, 0))  # transparent white = keep
    assert not read_mask(rgba, (2, 2)).any()
    assert read_mask(np.array([[0.2, 0.7]]), (2, 1)).tolist() == [[False, True]]
    with pytest.warns(UserWarning, match="resizing the mask"):
        assert read_mask(np.ones((4, 4), bool), (8, 6)).shape == (6, 8)
    assert box_mask((1, 0, 3, 2), (4, 4)).sum() == 4


def test_size_rule():
    assert fit_scale((64, 64), (64, 64), 128) == 2.0        # small images grow to the model
    assert fit_scale((512, 256), (512, 256), 128) == 0.5    # big ones shrink to it
    assert fit_scale((256, 256), (128, 128), 128) == 1.0    # outpainting keeps the image's scale
    assert scaled_size((45, 37), 128 / 37, 8) == (152, 128)  # 155.7 px -> 19 tokens of 8


def test_empty_mask_returns_the_input(pipe):
    image = picture()
    with pytest.warns(UserWarning, match="nothing to inpaint"):
        res = pipe.inpaint(image, PROMPT, mask=np.zeros((32, 32), bool), n=2)
    assert all(np.array_equal(np.asarray(im), np.asarray(image)) for im in res.images)
    with pytest.warns(UserWarning, match="nothing to outpaint"):
        pipe.outpaint(image, PROMPT)


@pytest.mark.parametrize("call, match", [
    (lambda p: p.inpaint(picture(), PROMPT, box=(0, 0, 40, 8)), "box"),
    (lambda p: p.inpaint(picture(), PROMPT, box=(8, 0, 4, 8)), "box"),
    (lambda p: p.inpaint(picture(), PROMPT), "exactly one"),
    (lambda p: p.inpaint(picture(), PROMPT, mask=np.ones((32, 32)), box=(0, 0, 4, 4)), "exactly one"),
    (lambda p: p.inpaint(picture(), PROMPT, mask=np.ones((2, 32, 32))), "2-D"),
    (lambda p: p.inpaint(picture(), PROMPT, box=(0, 0, 4, 4), dilate=-1), "dilate"),
    (lambda p: p.inpaint(picture(), "", box=(0, 0, 4, 4)), "empty"),
    (lambda p: p.outpaint(picture(), PROMPT, left=-8), "left"),
    (lambda p: p.edit(picture(), PROMPT, strength=1.5), "strength"),
    (lambda p: p.edit(picture(), PROMPT, iterations=0), "iterations"),
    (lambda p: p.img2img(np.zeros((4, 4)), PROMPT), "image is a ndarray"),
    (lambda p: p.generate_tokens(PROMPT, init=torch.full((16, 16), 17)), "outside"),
])
def test_bad_input(pipe, call, match):
    with pytest.raises(ConfigError, match=match):
        call(pipe)


def test_unreadable_files(pipe, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="unreadable"):
        pipe.inpaint(picture(), PROMPT, mask=bad)
    with pytest.raises(DataError, match="not found"):
        pipe.edit(tmp_path / "missing.png", PROMPT)


def test_cli(model_dir, tmp_path, capsys):
    src = tmp_path / "in.png"
    picture(40, 32).save(src)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), ((4, 20), (4, 28)))).save(mask)
    common = ["--image", str(src), "--model", str(model_dir), "--steps", "2"]
    runs = [["inpaint", PROMPT, "--mask", str(mask)], ["inpaint", PROMPT, "--box", "0,0,8,8", "--n", "2"],
            ["outpaint", PROMPT, "--left", "8"], ["edit", PROMPT, "--iterations", "1"],
            ["img2img", PROMPT, "--strength", "0.5"], ["variations", "--n", "2"]]
    for i, run in enumerate(runs):
        out = tmp_path / f"{i}.png"
        assert main([*run, *common, "-o", str(out), "--out-dir", str(tmp_path / f"d{i}"), "--compare"]) == 0
        each = sorted((tmp_path / f"d{i}").glob("*.png"))
        assert each and Image.open(each[0]).size == ((48, 32) if run[0] == "outpaint" else (40, 32))
    assert "tokens re-generated" in capsys.readouterr().out


@pytest.mark.parametrize("args, match", [
    (["inpaint", PROMPT, "--box", "1,2,3"], "--box"), (["outpaint", PROMPT, "--top", "-1"], "--top"),
    (["edit", PROMPT, "--strength", "2"], "--strength"), (["inpaint", PROMPT], "--mask"),
    (["img2img", PROMPT, "--image", "missing.png"], "not found")])
def test_cli_bad_input(model_dir, tmp_path, capsys, args, match):
    argv = [*args, "--model", str(model_dir), "-o", str(tmp_path / "x.png")]
    if "--image" not in argv:
        picture().save(tmp_path / "in.png")
        argv += ["--image", str(tmp_path / "in.png")]
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert code in (1, 2) and match in err and "Traceback" not in err


def test_warnings_are_not_errors(pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.inpaint(picture(), PROMPT, box=(0, 0, 8, 8))  # a well-formed call warns about nothing
