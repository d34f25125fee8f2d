import json
import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from fastmuse.config import Config
from fastmuse.errors import CheckpointError
from fastmuse.hub import PretrainedMixin, load_checkpoint, resolve, save_checkpoint


@dataclass
class TinyConfig(Config):
    kind = "tiny_mlp"
    width: int = 8


class Tiny(nn.Module, PretrainedMixin):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__()
        self.config = config
        self.fc = nn.Linear(4, config.width)


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    m = Tiny(TinyConfig(width=5))
    m.save_pretrained(tmp_path / "ckpt", extra_files={"README.md": b"# card\n"})
    files = sorted(os.listdir(tmp_path / "ckpt"))
    assert files == ["README.md", "config.json", "manifest.json", "model.safetensors"]
    back = Tiny.from_pretrained(tmp_path / "ckpt")
    assert back.config == m.config
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    # nothing but the folder itself is left beside it (no temp dirs)
    assert os.listdir(tmp_path) == ["ckpt"]


def test_overwrite_replaces_whole_folder(tmp_path):
    save_checkpoint(tmp_path / "c", TinyConfig(), {"model": {"a": torch.ones(2)}, "ema": {}})
    save_checkpoint(tmp_path / "c", TinyConfig(width=3), {"model": {"a": torch.zeros(2)}})
    ckpt = load_checkpoint(tmp_path / "c")
    assert "ema.safetensors" not in ckpt.files
    assert ckpt.config["width"] == 3
    assert torch.equal(ckpt.weights()["a"], torch.zeros(2))
    assert sorted(os.listdir(tmp_path)) == ["c"]


def test_interrupted_save_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "c", TinyConfig(), {"model": {"a": torch.ones(2)}})

    class Boom(Exception):
        pass

    def broken_save(*args, **kwargs):
        raise Boom

    monkeypatch.setattr("fastmuse.hub.save_file", broken_save)
    with pytest.raises(Boom):
        save_checkpoint(tmp_path / "c", TinyConfig(width=3), {"model": {"a": torch.zeros(2)}})
    ckpt = load_checkpoint(tmp_path / "c")
    assert torch.equal(ckpt.weights()["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["c"]


def _saved(tmp_path):
    return Tiny(TinyConfig()).save_pretrained(tmp_path / "ckpt")


def test_flipped_byte_is_detected(tmp_path):
    folder = _saved(tmp_path)
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        Tiny.from_pretrained(folder)


def test_truncated_file_is_detected(tmp_path):
    folder = _saved(tmp_path)
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="truncated"):
        Tiny.from_pretrained(folder)


def test_missing_file_and_manifest(tmp_path):
    folder = _saved(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="no manifest.json"):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not found|neither a folder"):
        load_checkpoint(tmp_path / "absent")


def test_refuses_pickles(tmp_path):
    folder = tmp_path / "pkl"
    folder.mkdir()
    torch.save({"a": torch.ones(1)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="refusing to load pickle"):
        load_checkpoint(folder)


def test_pickle_listed_in_manifest_refused(tmp_path):
    folder = _saved(tmp_path)
    torch.save({"a": 1}, folder / "extra.pt")
    m = json.loads((folder / "manifest.json").read_text())
    m["files"]["extra.pt"] = {"bytes": (folder / "extra.pt").stat().st_size, "sha256": "0"}
    (folder / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="refusing to load pickle"):
        load_checkpoint(folder)


def test_config_mismatch_is_clear(tmp_path):
    folder = save_checkpoint(tmp_path / "c", TinyConfig(width=5),
                             {"model": Tiny(TinyConfig(width=6)).state_dict()})
    with pytest.raises(CheckpointError, match=r"fc\.(weight|bias) has shape \(6"):
        Tiny.from_pretrained(folder)
    folder = save_checkpoint(tmp_path / "d", TinyConfig(), {"model": {"other": torch.ones(1)}})
    with pytest.raises(CheckpointError, match="do not match the config"):
        Tiny.from_pretrained(folder)


def test_hand_edited_config_is_caught(tmp_path):
    folder = _saved(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["width"] = 9
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config\.json: (sha256|\d+ bytes)"):
        Tiny.from_pretrained(folder)


def test_checkpoint_of_another_kind_is_refused(tmp_path):
    @dataclass
    class OtherConfig(Config):
        kind = "other"
        width: int = 8

    folder = save_checkpoint(tmp_path / "c", OtherConfig(), {"model": {}})
    with pytest.raises(CheckpointError, match="'kind' is 'other', expected 'tiny_mlp'"):
        Tiny.from_pretrained(folder)


def test_unknown_bundled_name():
    with pytest.raises(CheckpointError, match="never downloads"):
        resolve("no-such-model")
