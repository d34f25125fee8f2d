"""Behaviour kept: every bundled model's images, one inpaint and one server response, byte for
byte, against the hashes recorded on this kind of CPU (scripts/behaviour_hashes.py). A change
that alters what the models make on purpose re-records them (`--record`) and says so."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "behaviour_hashes.py"


def load_script():
    spec = importlib.util.spec_from_file_location("behaviour_hashes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bundled_models_make_what_they_made():
    pytest.importorskip("fastapi")
    script = load_script()
    record = script.RECORDS / f"{script.machine_key()}.json"
    if not record.is_file():
        pytest.skip(f"no behaviour hashes recorded for this CPU ({record.name})")
    want = json.loads(record.read_text())
    got = script.behaviour_hashes()
    changed = [k for k in want if want[k] != got.get(k)]
    assert not changed, f"images changed for {changed} (`{SCRIPT.name} --record` if on purpose)"
