"""Masked-transformer training: runs, logs, resumes exactly, DDP ranks agree."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastmuse.data.tokens import TokenData
from fastmuse.errors import ConfigError, DataError
from fastmuse.hub import load_checkpoint
from fastmuse.models import MaskedTransformer, MaskedTransformerConfig, MMDiTConfig, UViTConfig
from fastmuse.train.losses import masked_loss, random_mask
from fastmuse.train.masked import TransformerTrainConfig, train_transformer
from fastmuse.train.run import weights_checksum
from helpers import tiny_dataset, tiny_text_encoder, tiny_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("parts")
    return {"data": str(tiny_dataset(root / "d", n=16, size=32)),
            "tokenizer": str(tiny_tokenizer(root / "tok")),
            "text_encoder": str(tiny_text_encoder(root / "te")),
            "cache_dir": str(root / "cache")}


def cfg_for(parts, **kw) -> TransformerTrainConfig:
    model = MaskedTransformerConfig(dim=32, depth=2, heads=2, resolution=32)
    base = dict(model=model, data=(parts["data"],), repeats=(1,), tokenizer=parts["tokenizer"],
                text_encoder=parts["text_encoder"], cache_dir=parts["cache_dir"], batch_size=4, steps=4,
                warmup_steps=1, log_every=1, eval_every=2, save_every=2, sample_steps=2,
                sample_prompts=("a red square", "a blue square"))
    return TransformerTrainConfig(**{**base, **kw})


def test_run_writes_everything(parts, tmp_path):
    out = train_transformer(cfg_for(parts), tmp_path / "run")
    model = MaskedTransformer.from_pretrained(out)
    assert model.config.codebook_size == 16 and model.config.grid == 16 and model.config.text_dim == 32
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if "loss" in r] == [1, 2, 3, 4]
    evals = [r for r in logs if "val_acc" in r]
    assert [r["step"] for r in evals] == [2, 4] and 0 <= evals[-1]["val_acc"] <= 1
    grids = sorted(p.name for p in (tmp_path / "run/samples").iterdir())
    assert grids == ["step-000002.png", "step-000004.png"]
    cache = TokenData.load(next(Path(parts["cache_dir"]).iterdir()))
    assert len(cache.train) == 12 and len(cache.val) == 4 and cache.train.tokens.shape[1:] == (16, 16)


def test_shapes_learning_curve_is_logged(parts, tmp_path, monkeypatch):
    from fastmuse.eval import suite

    seen, real = [], suite.shapes_accuracy
    monkeypatch.setattr(suite, "shapes_accuracy",
                        lambda pipe, *a: seen.append(pipe.defaults) or real(pipe, *a))
    train_transformer(cfg_for(parts, steps=2, eval_shapes=("single", "colour"), eval_shapes_seeds=1,
                              sample_temperature=0.7, sample_guidance_interval=(0.0, 0.5)), tmp_path / "run")
    # measured with the sampler the model will ship with, not the sampler's defaults
    assert [(d.steps, d.temperature, d.guidance_interval) for d in seen] == [(2, 0.7, [0.0, 0.5])]
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    point = next(r for r in logs if "shapes_overall" in r)
    assert point["step"] == 2 and {"shapes_single", "shapes_colour"} <= set(point)
    assert all(0 <= point[k] <= 1 for k in point if k.startswith("shapes_"))
    with pytest.raises(ConfigError, match="eval_shapes entry"):
        cfg_for(parts, eval_shapes=("squares",))
    with pytest.raises(ConfigError, match="sample_guidance_interval is"):
        cfg_for(parts, sample_guidance_interval=(0.5, 0.5))


def test_resume_is_exact(parts, tmp_path):
    cfg = cfg_for(parts)
    train_transformer(cfg, tmp_path / "a")
    train_transformer(cfg, tmp_path / "b", stop_at=2)
    assert not (tmp_path / "b/transformer").exists()
    train_transformer(cfg, tmp_path / "b", resume=True)
    for name in ("model", "ema", "optimizer_model"):
        wa = load_checkpoint(tmp_path / "a/checkpoints/step-000004").weights(name)
        wb = load_checkpoint(tmp_path / "b/checkpoints/step-000004").weights(name)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), name
    def losses(run):
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, lines) if "loss" in r]

    assert losses("a") == losses("b")


def test_refuses_to_overwrite_and_needs_checkpoint(parts, tmp_path):
    train_transformer(cfg_for(parts, steps=2), tmp_path / "run")
    with pytest.raises(DataError, match="already holds a run"):
        train_transformer(cfg_for(parts, steps=2), tmp_path / "run")
    with pytest.raises(DataError, match="no checkpoint"):
        train_transformer(cfg_for(parts), tmp_path / "empty", resume=True)


def test_learns_the_tiny_set(parts, tmp_path):
    cfg = cfg_for(parts, steps=60, lr=3e-3, eval_every=60, save_every=60, caption_dropout=0.0,
                  label_smoothing=0.0)
    train_transformer(cfg, tmp_path / "run")
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:5]) / 5


def test_random_mask_counts():
    tokens = torch.randint(0, 10, (64, 4, 4))
    masked, mask = random_mask(tokens, 10, torch.Generator().manual_seed(0))
    assert (mask.flatten(1).sum(1) >= 1).all() and (masked[mask] == 10).all()
    assert torch.equal(masked[~mask], tokens[~mask])
    assert 0.5 < mask.float().mean() < 0.8  # E[cos(pi/2 U)] = 2/pi


def test_random_mask_ratio_range():
    """`ratios` truncates the cosine schedule: every grid's masked share lies in [lo, hi] and
    both ends are reached; the full range draws exactly what the default does."""
    tokens = torch.randint(0, 10, (512, 8, 8))
    mask = random_mask(tokens, 10, torch.Generator().manual_seed(0), (0.5, 0.75))[1]
    share = mask.flatten(1).float().mean(1)
    assert 0.5 <= share.min() < 0.52 and 0.73 < share.max() <= 0.75 + 1 / 64
    default = random_mask(tokens, 10, torch.Generator().manual_seed(1))
    full = random_mask(tokens, 10, torch.Generator().manual_seed(1), (0.0, 1.0))
    assert all(torch.equal(a, b) for a, b in zip(default, full, strict=True))


def test_loss_weighting_token_or_image():
    logits = torch.randn(3, 2, 2, 5)
    tokens = torch.randint(0, 5, (3, 2, 2))
    mask = torch.zeros(3, 2, 2, dtype=torch.bool)
    mask[0] = True  # 4 masked tokens
    mask[1, 0, 0] = True  # 1
    mask[2, 1] = True  # 2
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), tokens.flatten(), reduction="none")
    ce = ce.view(3, 4)
    m = mask.flatten(1)
    model = lambda inputs, text: logits  # noqa: E731
    token, _ = masked_loss(model, tokens, mask, tokens, None, weighting="token")
    image, _ = masked_loss(model, tokens, mask, tokens, None, weighting="image")
    assert torch.allclose(token, ce[m].mean())
    assert torch.allclose(image, torch.stack([ce[i][m[i]].mean() for i in range(3)]).mean())


def test_config_errors(parts):
    with pytest.raises(ConfigError, match="repeats"):
        cfg_for(parts, repeats=(1, 2))
    with pytest.raises(ConfigError, match="caption_dropout"):
        cfg_for(parts, caption_dropout=1.5)
    with pytest.raises(ConfigError, match="loss_weighting': 'pixel' is not one of 'token', 'image'"):
        TransformerTrainConfig.from_dict({**cfg_for(parts).to_dict(), "loss_weighting": "pixel"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_processes_agree(parts, tmp_path):
    cfg = cfg_for(parts, eval_every=100, save_every=100)
    cfg.save(tmp_path / "cfg.json")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(_free_port()), str(Path(__file__).parent / "ddp_worker.py"), str(tmp_path / "cfg.json"),
           str(tmp_path / "run")]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    logs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    check = [r for r in logs if "ranks_agree" in r]
    assert check and check[-1]["ranks_agree"] and len(check[-1]["rank_checksums"]) == 2
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/step-000004")
    model = MaskedTransformer(MaskedTransformerConfig.from_dict(ckpt.config["model"]))
    model.load_state_dict(ckpt.weights("model"))
    assert weights_checksum(model) == check[-1]["rank_checksums"][0]


def test_export_and_eval(parts, tmp_path, capsys):
    from fastmuse.cli import main
    from fastmuse.pipeline import Pipeline

    train_transformer(cfg_for(parts), tmp_path / "run")
    assert main(["transformer", "export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "m"),
                 "--guidance-interval", "0,0.5"]) == 0
    assert json.loads((tmp_path / "m/sampler.json").read_text())["guidance_interval"] == [0.0, 0.5]
    card = (tmp_path / "m/README.md").read_text()
    assert "## Held-out token accuracy" in card and "Masked-token accuracy with fixed masks" in card
    assert "| all |" in card and "cosine schedule" in card
    pipe = Pipeline.from_pretrained(tmp_path / "m")
    assert pipe("a red square", steps=2)[0].size == (32, 32)
    capsys.readouterr()
    assert main(["transformer", "eval", "--model", str(tmp_path / "m"), "--config",
                 str(tmp_path / "run/config.json")]) == 0
    ev = json.loads(capsys.readouterr().out)
    exported = json.loads((tmp_path / "m/eval.json").read_text())
    assert ev["with_captions"] == exported["with_captions"]  # the card's figures rerun exactly


@pytest.mark.parametrize("model", [
    UViTConfig(hidden_size=32, cond_embed_dim=32, micro_cond_encode_dim=4, micro_cond_embed_dim=20,
               in_channels=12, block_out_channels=16, num_res_blocks=1, block_num_heads=2,
               num_hidden_layers=2, num_attention_heads=4, intermediate_size=40, downsample=True,
               upsample=True, resolution=32, micro_conds=(32.0, 32.0, 0.0, 0.0, 6.0)),
    MMDiTConfig(num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                pooled_projection_dim=32, axes_dims_rope=(4, 6, 6), resolution=32,
                micro_conds=(32.0, 32.0, 0.0, 0.0, 6.0)),
], ids=["uvit", "mmdit"])
def test_public_architectures_train_and_export(parts, tmp_path, model):
    """aMUSEd's U-ViT and Meissonic's MMDiT train on our data with the same trainer, resume
    exactly, export with a card and generate."""
    from fastmuse.cli import main
    from fastmuse.pipeline import Pipeline

    cfg = cfg_for(parts, model=model)
    train_transformer(cfg, tmp_path / "a")
    train_transformer(cfg, tmp_path / "b", stop_at=2)
    train_transformer(cfg, tmp_path / "b", resume=True)
    wa, wb = (load_checkpoint(tmp_path / f"{r}/checkpoints/step-000004").weights("model") for r in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    logs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in logs if "loss" in r)
    assert main(["transformer", "export", "--run", str(tmp_path / "a"), "--out", str(tmp_path / "m")]) == 0
    assert model.describe().split(":")[0] in (tmp_path / "m/README.md").read_text()
    pipe = Pipeline.from_pretrained(tmp_path / "m")
    assert pipe.transformer.config.grid == 16 and pipe("a red square", steps=2)[0].size == (32, 32)


def test_architecture_that_does_not_fit_the_encoder(parts, tmp_path):
    # MMDiT reads the pooled text as its width: 2 x 8 = 16 is not the tiny encoder's 32
    model = MMDiTConfig(num_layers=1, num_single_layers=1, attention_head_dim=8, num_attention_heads=2,
                        pooled_projection_dim=16, axes_dims_rope=(2, 2, 4), resolution=32)
    with pytest.raises(ConfigError, match="model \\(mmdit\\).*pooled_projection_dim"):
        train_transformer(cfg_for(parts, model=model), tmp_path / "run")


def distill_config_loads(path: Path) -> bool:
    """A distillation config (by its kind) loads and names its family's bundled teacher;
    False for any other kind."""
    from fastmuse.distill.dimo_train import DiMOConfig
    from fastmuse.distill.dmd_train import DMDConfig
    from fastmuse.distill.scm_train import SCMConfig

    kind = json.loads(path.read_text())["kind"]
    teachers = {DiMOConfig: "muse-128", DMDConfig: "dit-128", SCMConfig: "dit-128"}
    for config, teacher in teachers.items():
        if kind == config.kind:
            assert config.load(path).teacher == teacher
            return True
    return False


@pytest.mark.parametrize("path", sorted(ROOT.glob("configs/*-128.json")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path):
    if distill_config_loads(path):
        return
    cfg = TransformerTrainConfig.load(path)
    assert cfg.model.resolution == 128 and cfg.text_encoder == cfg.model.text_encoder == "minilm"


@pytest.mark.parametrize("path", sorted([*ROOT.glob("configs/ablations/*.json"),
                                         *ROOT.glob("configs/gpu/*.json")]), ids=lambda p: p.name)
def test_ablation_configs_load(path):
    if distill_config_loads(path):  # the DMD2 and sCD ablations
        return
    cfg = TransformerTrainConfig.load(path)
    assert cfg.tokenizer == cfg.model.tokenizer and cfg.eval_shapes
