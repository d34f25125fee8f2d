"""Training runs, logs, and resumes exactly."""

import json

import pytest
import torch

from fastmuse.cli import main
from fastmuse.errors import ConfigError, DataError
from fastmuse.hub import load_checkpoint
from fastmuse.tokenizer import VQConfig, VQTokenizer
from fastmuse.train.schedule import lr_at
from fastmuse.train.tokenizer import TokenizerTrainConfig, train_tokenizer
from helpers import tiny_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny_dataset(tmp_path_factory.mktemp("data") / "d", n=24, size=32)


def cfg_for(data, **kw) -> TokenizerTrainConfig:
    model = VQConfig(block_out_channels=(8, 16), norm_num_groups=8, latent_channels=4,
                     vq_embed_dim=4, num_vq_embeddings=16)
    base = dict(model=model, data=(str(data),), val_data=str(data), resolution=32, crop=32,
                batch_size=4, steps=6, warmup_steps=2, log_every=1, eval_every=3, save_every=3,
                restart_every=2, num_val=4, gan_weight=0.1, gan_start=3, gan_warmup=2)
    return TokenizerTrainConfig(**{**base, **kw})


def weights(folder):
    return load_checkpoint(folder).weights("model")


def test_run_writes_everything(data, tmp_path):
    out = train_tokenizer(cfg_for(data), tmp_path / "run")
    assert VQTokenizer.from_pretrained(out).codebook_size == 16
    logs = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4, 5, 6]
    evals = [r for r in logs if "val_psnr" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert {"val_ssim", "val_codebook_usage"} <= set(evals[0])
    assert "d_loss" in logs[-2] and "restarted" in logs[1]
    assert sorted(p.name for p in (tmp_path / "run/samples").iterdir()) == [
        "step-000003.png", "step-000006.png"]
    assert sorted(p.name for p in (tmp_path / "run/checkpoints").iterdir()) == [
        "step-000003", "step-000006"]


def test_resume_is_exact(data, tmp_path):
    cfg = cfg_for(data)
    train_tokenizer(cfg, tmp_path / "straight")
    train_tokenizer(cfg, tmp_path / "split", stop_at=3)
    assert not (tmp_path / "split/tokenizer").exists()
    train_tokenizer(cfg, tmp_path / "split", resume=True)
    a, b = weights(tmp_path / "straight/checkpoints/step-000006"), \
        weights(tmp_path / "split/checkpoints/step-000006")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    disc_a = load_checkpoint(tmp_path / "straight/checkpoints/step-000006").weights("optimizer_disc")
    disc_b = load_checkpoint(tmp_path / "split/checkpoints/step-000006").weights("optimizer_disc")
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)
    log = (tmp_path / "split/metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in log if "loss" in json.loads(x)] == [1, 2, 3, 4, 5, 6]


def test_run_folder_guards(data, tmp_path):
    cfg = cfg_for(data, steps=2, save_every=1)
    with pytest.raises(DataError, match="no checkpoint"):
        train_tokenizer(cfg, tmp_path / "r", resume=True)
    train_tokenizer(cfg, tmp_path / "r", stop_at=1)
    with pytest.raises(DataError, match="already holds a run"):
        train_tokenizer(cfg, tmp_path / "r")


def test_lr_schedule():
    cfg = TokenizerTrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)


def test_crop_must_fit_the_model():
    with pytest.raises(ConfigError, match="multiple of the tokenizer's downsampling 8"):
        TokenizerTrainConfig(crop=60)
    with pytest.raises(ConfigError, match="the discriminator needs crop >= 32"):
        TokenizerTrainConfig(crop=16, gan_weight=0.1)


def test_cli_train_recon_eval(data, tmp_path, capsys):
    cfg_for(data, steps=2, gan_weight=0.0).save(tmp_path / "cfg.json")
    assert main(["train", "tokenizer", "--config", str(tmp_path / "cfg.json"),
                 "--out", str(tmp_path / "run")]) == 0
    tok = tmp_path / "run/tokenizer"
    assert main(["tokenizer", "recon", "--model", str(tok), "--image",
                 str(data / "images/000001.png"), "-o", str(tmp_path / "r.png"),
                 "--resolution", "24"]) == 0
    from PIL import Image
    assert Image.open(tmp_path / "r.png").size == (24, 24)
    assert main(["tokenizer", "eval", "--model", str(tok), "--data", str(data), "--resolution",
                 "32", "-o", str(tmp_path / "m.json"), "--grid", str(tmp_path / "g.png")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert m["images"] == 6 and 0 < m["codebook_usage"] <= 1 and m["psnr"] > 0
    assert main(["tokenizer", "recon", "--model", str(tok), "--image",
                 str(data / "images/000001.png"), "-o", str(tmp_path / "x.png"),
                 "--resolution", "31"]) == 1
    assert "multiple of the tokenizer's downsampling 2" in capsys.readouterr().err


def test_warm_start_across_padding_and_norm_groups(data, tmp_path):
    from fastmuse.train.tokenizer import warm_start_tokenizer

    src = train_tokenizer(cfg_for(data, steps=2, gan_weight=0.0), tmp_path / "src")
    model = VQTokenizer(cfg_for(data).model.replace(padding="replicate", norm_num_groups=4))
    note = warm_start_tokenizer(model, str(src))
    assert "padding zeros -> replicate" in note and "norm_num_groups 8 -> 4" in note
    theirs = VQTokenizer.from_pretrained(src).state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    other = VQTokenizer(cfg_for(data).model.replace(num_vq_embeddings=32))
    with pytest.raises(ConfigError, match="init_from .*same channels, latent size and codebook"):
        warm_start_tokenizer(other, str(src))
    # a run warm-started this way trains and resumes like any other
    cfg = cfg_for(data, model=model.config, init_from=str(src), steps=4, gan_weight=0.0)
    train_tokenizer(cfg, tmp_path / "warm")
    assert TokenizerTrainConfig.load(tmp_path / "warm/config.json").init_from == str(src)


@pytest.mark.parametrize("name", ["tokenizer-f8", "tokenizer-v2"])
def test_shipped_tokenizer_configs_load(name):
    from pathlib import Path

    cfg = TokenizerTrainConfig.load(Path(__file__).parent.parent / "configs" / f"{name}.json")
    assert cfg.model.padding == ("replicate" if name == "tokenizer-v2" else "zeros")
    assert cfg.init_from == ("tokenizer-f8" if name == "tokenizer-v2" else "")


def test_a_run_creates_nothing_off_the_model_device(data, tmp_path):
    """The tokenizer trainer (setup on the CPU, by name; crops and code restarts drawn on the
    CPU) runs its steps, GAN phase, restarts, eval and checkpoint under torch's default device
    "meta", and trains the same weights as without it."""
    from test_device import default_device_meta

    cfg = cfg_for(data)
    want = train_tokenizer(cfg, tmp_path / "plain")
    with default_device_meta():
        got = train_tokenizer(cfg, tmp_path / "meta")
    assert (got / "model.safetensors").read_bytes() == (want / "model.safetensors").read_bytes()
