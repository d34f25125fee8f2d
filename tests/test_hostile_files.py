"""Broken files and folders a crash or a careless user leaves: torn logs, stale temp folders,
loose sampler.json, configs asking for absurd sizes, an empty --model. Each gets one clear
error or is repaired, never an internal error or an allocation until memory runs out."""

import json
import shutil

import pytest

from fastmuse.cli import main
from fastmuse.errors import CheckpointError, ConfigError
from fastmuse.fsutil import sha256_file
from fastmuse.hub import MANIFEST_NAME
from fastmuse.models import MaskedTransformerConfig
from fastmuse.pipeline import Pipeline
from fastmuse.train.log import JsonlLogger
from fastmuse.train.masked import TransformerTrainConfig, train_transformer
from helpers import tiny_dataset, tiny_pipeline, tiny_text_encoder, tiny_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_pipeline(tmp_path_factory.mktemp("files"))


def edited_copy(model_dir, to, name: str, text: str):
    """A copy of the model folder with `name` replaced and the manifest updated to match
    (what a user editing a folder by hand and re-signing it does)."""
    folder = to / "m"
    shutil.copytree(model_dir, folder)
    (folder / name).write_text(text)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest["files"][name] = {"bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)}
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"grad_norm": 1.2, "lo')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:3: not a JSON record"):
        JsonlLogger(path, resume_step=2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_resume_survives_a_torn_log_and_removes_stale_temp_folders(tmp_path):
    parts = {"data": str(tiny_dataset(tmp_path / "d", n=8, size=32)),
             "tokenizer": str(tiny_tokenizer(tmp_path / "tok")),
             "text_encoder": str(tiny_text_encoder(tmp_path / "te"))}
    cfg = TransformerTrainConfig(model=MaskedTransformerConfig(dim=32, depth=1, heads=2, resolution=32),
                                 data=(parts["data"],), repeats=(1,), tokenizer=parts["tokenizer"],
                                 text_encoder=parts["text_encoder"], cache_dir=str(tmp_path / "cache"),
                                 batch_size=2, steps=4, warmup_steps=1, eval_every=2, save_every=2,
                                 sample_steps=1, sample_prompts=("a red square",))
    run = tmp_path / "run"
    train_transformer(cfg, run, stop_at=2)
    # what kill -9 during saves leaves: partial folders, and a half-written log line
    stale = [run / "checkpoints/.step-000004.abc123.tmp", run / ".transformer.xyz.tmp",
             run / "checkpoints/.step-000002.old-4242"]
    for d in stale:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"\0" * 1000)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"grad_norm": 1.2, "lo')
    with pytest.warns(UserWarning, match="not a JSON record"):
        train_transformer(cfg, run, resume=True)
    assert not any(d.exists() for d in stale)
    assert (run / "transformer/config.json").is_file()
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 4


def test_sampler_json_is_strict(model_dir, tmp_path):
    sampler = json.loads((model_dir / "sampler.json").read_text())
    folder = edited_copy(model_dir, tmp_path / "a", "sampler.json", json.dumps({**sampler, "stepz": 3}))
    with pytest.raises(ConfigError, match=r"sampler.json: unknown key 'stepz' \(accepted: steps, "):
        Pipeline.from_pretrained(folder)
    assert main(["generate", "x", "--model", str(folder), "-o", str(tmp_path / "o.png")]) == 1
    folder = edited_copy(model_dir, tmp_path / "b", "sampler.json", "[1, 2")
    with pytest.raises(ConfigError, match="sampler.json: not valid JSON"):
        Pipeline.from_pretrained(folder)


@pytest.mark.parametrize("key, value, match", [
    ("depth", 1_000_000, "'depth' is 1000000; accepted: 1 <= depth <= 256"),
    ("dim", 10**9, "'dim' is 1000000000; accepted: 1 <= dim <= 65536"),
    ("codebook_size", 1 << 30, "codebook_size"),
])
def test_absurd_model_sizes_are_refused_before_allocation(model_dir, tmp_path, key, value, match):
    cfg = json.loads((model_dir / "config.json").read_text())
    folder = edited_copy(model_dir, tmp_path, "config.json", json.dumps({**cfg, key: value}))
    with pytest.raises(CheckpointError, match=match):
        Pipeline.from_pretrained(folder)


def test_a_config_that_does_not_match_its_weights_allocates_nothing(model_dir, tmp_path):
    cfg = json.loads((model_dir / "config.json").read_text())
    folder = edited_copy(model_dir, tmp_path, "config.json",
                         json.dumps({**cfg, "depth": 200, "dim": 4096, "heads": 32}))
    # ~40 G parameters if it were built: the shape check on the meta device refuses it first
    with pytest.raises(CheckpointError, match="weights do not match the config"):
        Pipeline.from_pretrained(folder)


def test_an_empty_model_name_is_an_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model is empty; accepted: a model folder or a bundled name"):
        Pipeline.from_pretrained("")
    assert main(["generate", "x", "--model", "", "-o", "o.png"]) == 1
