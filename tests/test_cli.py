import subprocess
import sys

import pytest

from fastmuse.cli import main
from helpers import tiny_dataset


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("data", "checkpoint"):
        assert cmd in out


def test_python_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastmuse", "data", "--help"],
                       capture_output=True, text=True, check=True)
    assert "emoji" in r.stdout and "shapes" in r.stdout and "shards" in r.stdout


def test_user_error_is_one_line(tmp_path, capsys):
    assert main(["checkpoint", "verify", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fastmuse: error:") and "Traceback" not in err


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "shapes", "--out", "x", "--n", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--n must be an integer >= 1" in err


def test_debug_shows_traceback(tmp_path):
    from fastmuse.errors import CheckpointError

    with pytest.raises(CheckpointError):
        main(["checkpoint", "verify", str(tmp_path / "missing"), "--debug"])


def test_internal_error_is_one_line(monkeypatch, capsys, tmp_path):
    def boom(*a, **k):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr("fastmuse.data.shards.write_shards", boom)
    assert main(["data", "shards", "--src", str(tmp_path), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: kaput" in err and "--debug" in err


def test_shards_and_preview(tmp_path, capsys):
    root = tiny_dataset(tmp_path / "d", n=10)
    assert main(["data", "shards", "--src", str(root), "--out", str(tmp_path / "s"),
                 "--maxcount", "4"]) == 0
    assert main(["data", "preview", str(tmp_path / "s"), "-o", str(tmp_path / "g.png"),
                 "--n", "6", "--resolution", "16"]) == 0
    assert (tmp_path / "g.png").is_file()
    assert main(["data", "preview", str(root), "--split", "val", "-o",
                 str(tmp_path / "v.png"), "--resolution", "16"]) == 0
    assert "3 samples" in capsys.readouterr().out
