import json
from dataclasses import dataclass, field
from typing import Literal

import pytest

from fastmuse.config import Config, check_range
from fastmuse.errors import ConfigError


@dataclass
class Inner(Config):
    kind = "inner"
    width: int = 8
    scale: float = 1.0


@dataclass
class Outer(Config):
    kind = "outer"
    name: str = "tiny"
    depth: int = 2
    dropout: float = 0.1
    use_bias: bool = True
    mults: tuple[int, ...] = (1, 2, 4)
    mode: Literal["ema", "st"] = "ema"
    encoder: str | None = None
    inner: Inner = field(default_factory=Inner)

    def validate(self) -> None:
        check_range("depth", self.depth, 1, 64)


def test_round_trip_through_file(tmp_path):
    cfg = Outer(name="x", depth=3, mults=(1, 1, 2, 8), mode="st", encoder="minilm",
                inner=Inner(width=4, scale=0.5))
    cfg.save(tmp_path / "config.json")
    back = Outer.load(tmp_path / "config.json")
    assert back == cfg
    data = json.loads((tmp_path / "config.json").read_text())
    assert data["format_version"] == 1 and data["kind"] == "outer"
    assert data["inner"]["kind"] == "inner"
    assert isinstance(back.mults, tuple)


def test_int_accepted_for_float():
    d = Outer().to_dict()
    d["dropout"] = 0
    assert Outer.from_dict(d).dropout == 0.0


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d.update(depht=3), "unknown key 'depht'"),
        (lambda d: d.pop("depth"), "missing key 'depth'"),
        (lambda d: d.pop("format_version"), "missing key 'format_version'"),
        (lambda d: d.update(format_version=99), "'format_version' is 99"),
        (lambda d: d.update(kind="other"), "'kind' is 'other'"),
        (lambda d: d.update(depth="3"), "depth': expected an integer"),
        (lambda d: d.update(depth=True), "depth': expected an integer"),
        (lambda d: d.update(use_bias=1), "use_bias': expected true or false"),
        (lambda d: d.update(mode="gumbel"), "'gumbel' is not one of"),
        (lambda d: d.update(mults=[1, "a"]), "mults[1]"),
        (lambda d: d["inner"].update(widht=2), "unknown key 'widht'"),
        (lambda d: d.update(depth=0), "'depth' is 0; accepted: 1 <= depth <= 64"),
    ],
)
def test_bad_config_names_the_key(mutate, needle):
    d = Outer().to_dict()
    mutate(d)
    with pytest.raises(ConfigError) as e:
        Outer.from_dict(d)
    assert needle in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Outer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Outer.load(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        Outer.load(tmp_path / "list.json")


def test_constructor_validates():
    with pytest.raises(ConfigError, match="depth"):
        Outer(depth=100)
