"""Dataclass configs that round-trip to `config.json`.

Every component has one `Config` subclass; its fields are the constructor arguments
of the component. Reading is strict: an unknown key, a missing key, a value of the
wrong type or a file of another format version is an error that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import operator
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError
from .fsutil import atomic_write_text

C = TypeVar("C", bound="Config")

FORMAT_KEY = "format_version"
KIND_KEY = "kind"


@dataclasses.dataclass
class Config:
    """Base class. Subclasses are dataclasses and set `kind` (what the config builds)."""

    kind: ClassVar[str] = "config"
    format_version: ClassVar[int] = 1
    # keys added after a format was released: a file without one gets the field's default,
    # so folders written before the key existed still load
    later_keys: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range checks; subclasses raise ConfigError naming the field."""

    # -- dict / json -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {FORMAT_KEY: self.format_version, KIND_KEY: self.kind}
        for f in dataclasses.fields(self):
            out[f.name] = _to_json(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "config") -> C:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop(FORMAT_KEY, None)
        kind = data.pop(KIND_KEY, None)
        if version is None:
            raise ConfigError(f"{where}: missing key '{FORMAT_KEY}'")
        if version != cls.format_version:
            raise ConfigError(
                f"{where}: '{FORMAT_KEY}' is {version!r}; this fastmuse reads "
                f"{cls.__name__} format {cls.format_version}"
            )
        if kind != cls.kind:
            raise ConfigError(f"{where}: '{KIND_KEY}' is {kind!r}, expected {cls.kind!r}")
        return _build(cls, data, where)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls: type[C], path: str | os.PathLike) -> C:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return cls.from_dict(read_json(path), where=str(path))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)


def read_json(path: Path) -> Any:
    """A JSON file's value; unreadable JSON is a ConfigError naming the file."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None


def _to_json(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, tuple | list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _build(cls: type[C], data: dict[str, Any], where: str) -> C:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{unknown[0]}' for {cls.__name__} "
            f"(accepted: {', '.join(sorted(fields))})"
        )
    for name in set(cls.later_keys) - set(data):
        f = fields[name]
        data[name] = _to_json(f.default if f.default_factory is dataclasses.MISSING else f.default_factory())
    missing = sorted(set(fields) - set(data))
    if missing:
        raise ConfigError(f"{where}: missing key '{missing[0]}' for {cls.__name__}")
    hints = get_type_hints(cls)
    kwargs = {name: _coerce(data[name], hints[name], f"{where}.{name}") for name in fields}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` (parsed JSON) against the annotation `tp`; convert lists to tuples."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"'{key}': {value!r} matches none of {_name(tp)}")
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"'{key}': expected null, got {value!r}")
        return None
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"'{key}': {value!r} is not one of {choices}")
        return value
    if isinstance(tp, type) and issubclass(tp, Config):
        return tp.from_dict(value, where=key) if not isinstance(value, tp) else value
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{key}': expected a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"'{key}': expected {len(args)} items, got {len(value)}")
            items = [_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            inner = args[0] if args else Any
            items = [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}': expected an object, got {value!r}")
        _, vt = get_args(tp) or (str, Any)
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}': expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"'{key}': expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}': expected a string, got {value!r}")
        return value
    raise TypeError(f"config field '{key}' has an unsupported annotation {tp!r}")


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_range(name: str, value: float, lo: float | None = None, hi: float | None = None) -> None:
    """Raise ConfigError unless lo <= value <= hi (either bound optional)."""
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else lo
        hi_s = "inf" if hi is None else hi
        raise ConfigError(f"'{name}' is {value!r}; accepted: {lo_s} <= {name} <= {hi_s}")


UNIT = ("0", 0.0, "1", 1.0)  # check_interval's default bounds: (low's text, low, high's text, high)


def check_interval(name: str, value, meaning: str, bounds: tuple[str, float, str, float] = UNIT,
                   strict: bool = False) -> None:
    """Raise ConfigError unless `value` is two numbers lo, hi with low <= lo < hi <= high
    (strict: low < lo and hi < high)."""
    low_text, low, high_text, high = bounds
    below, sign = (operator.lt, "<") if strict else (operator.le, "<=")
    if (not isinstance(value, list | tuple) or len(value) != 2
            or not all(isinstance(v, int | float) for v in value)
            or not (below(low, value[0]) and value[0] < value[1] and below(value[1], high))):
        raise ConfigError(f"{name} is {value!r}; accepted: two numbers lo, hi with "
                          f"{low_text} {sign} lo < hi {sign} {high_text} ({meaning})")


# Upper bounds of model size fields: a config is read before anything is allocated, and a
# mistyped or hostile `depth: 1000000` must be an error, not an allocation until memory runs out.
SIZE_LIMITS: dict[str, int] = {
    **dict.fromkeys(("depth", "num_layers", "num_single_layers", "num_hidden_layers"), 256),
    **dict.fromkeys(("heads", "num_attention_heads", "block_num_heads", "attention_head_dim"), 1024),
    **dict.fromkeys(("codebook_size", "vocab_size"), 1 << 20),
    **dict.fromkeys(("grid", "sample_size", "num_res_blocks", "patch"), 1024),
    "resolution": 16384,
}
DEFAULT_SIZE_LIMIT = 65536  # widths: dim, hidden_size, channels, text and pooled dims, ...


def check_size(name: str, value: int, low: int = 1) -> None:
    """A model size field: low <= value <= its SIZE_LIMITS bound (widths: DEFAULT_SIZE_LIMIT)."""
    check_range(name, value, low, SIZE_LIMITS.get(name, DEFAULT_SIZE_LIMIT))


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"'{name}' is {value!r}; accepted: {', '.join(map(repr, choices))}")
