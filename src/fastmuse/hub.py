"""Checkpoint folders: `config.json` + `*.safetensors` + `manifest.json` (sha256 of each file).

`save_checkpoint` builds the folder in a temp directory and renames it into place, so a
crash never leaves a half-written checkpoint. `load_checkpoint` checks every file named in
the manifest (present, right size, right sha256) before anything is deserialised, and
refuses pickle-based weights outright.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import Config
from .errors import CheckpointError, ConfigError
from .fsutil import atomic_dir, sha256_file, sha256_remembered

CONFIG_NAME = "config.json"
MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Bundled models live in the package so that an installed fastmuse finds them offline.
BUNDLED_DIR = Path(__file__).parent / "assets"


def bundled_models() -> list[str]:
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / MANIFEST_NAME).is_file())


def resolve(name_or_dir: str | os.PathLike) -> Path:
    """A local folder, or the name of a bundled model. Never touches the network."""
    if not str(name_or_dir).strip():  # Path("") is ".": never read the working folder by accident
        raise CheckpointError(f"model is empty; accepted: a model folder or a bundled name "
                              f"({', '.join(bundled_models()) or 'none yet'})")
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return path
    if isinstance(name_or_dir, str) and name_or_dir in bundled_models():
        return BUNDLED_DIR / name_or_dir
    names = ", ".join(bundled_models()) or "none yet"
    raise CheckpointError(
        f"model {str(name_or_dir)!r} is neither a folder nor a bundled model "
        f"(bundled: {names}); fastmuse never downloads weights"
    )


def save_checkpoint(
    folder: str | os.PathLike,
    config: Config,
    weights: Mapping[str, Mapping[str, torch.Tensor]],
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write `config.json`, one `<name>.safetensors` per entry of `weights`, extra files
    (model card, metrics) and a manifest, atomically. Returns the folder."""
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        (tmp / CONFIG_NAME).write_text(config.to_json(), encoding="utf-8")
        for name, state in weights.items():
            tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
            save_file(tensors, str(tmp / f"{name}.safetensors"), metadata={"format": "pt"})
        for name, data in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp / name).write_bytes(data)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "files": {f: {"bytes": (tmp / f).stat().st_size, "sha256": sha256_file(tmp / f)}
                      for f in files},
        }
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return folder


@dataclass
class Checkpoint:
    """A verified checkpoint folder: its parsed config and the files the manifest vouches for."""

    folder: Path
    config: dict[str, Any]
    files: tuple[str, ...]

    def weights(self, name: str = "model") -> dict[str, torch.Tensor]:
        fname = f"{name}.safetensors"
        if fname not in self.files:
            have = [f.removesuffix(".safetensors") for f in self.files if f.endswith(".safetensors")]
            raise CheckpointError(f"{self.folder}: no weights named {name!r} (has: {have})")
        try:
            return load_file(str(self.folder / fname))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{self.folder / fname}: unreadable safetensors ({e})") from None


def verify(folder: str | os.PathLike) -> tuple[str, ...]:
    """Check the manifest against the files on disk; return the files it lists."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        if pickles:
            raise CheckpointError(
                f"{folder}: refusing to load pickle-based weights ({', '.join(pickles)}); "
                "fastmuse only loads safetensors"
            )
        raise CheckpointError(f"{folder}: not a fastmuse checkpoint (no {MANIFEST_NAME})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["files"]
        if manifest.get("manifest_version") != MANIFEST_VERSION:
            raise CheckpointError(
                f"{manifest_path}: manifest_version {manifest.get('manifest_version')!r}, "
                f"expected {MANIFEST_VERSION}"
            )
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{manifest_path}: corrupt manifest ({e})") from None
    listed_pickles = [f for f in entries if Path(f).suffix in PICKLE_SUFFIXES]
    if listed_pickles:
        raise CheckpointError(f"{folder}: refusing to load pickle-based file {listed_pickles[0]}")
    for name, meta in entries.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: file {name} listed in the manifest is missing")
        size = path.stat().st_size
        if size != meta["bytes"]:
            raise CheckpointError(
                f"{path}: {size} bytes, manifest says {meta['bytes']} (truncated or replaced)"
            )
        if sha256_remembered(path) != meta["sha256"]:
            raise CheckpointError(f"{path}: sha256 does not match the manifest (corrupt file)")
    if CONFIG_NAME not in entries:
        raise CheckpointError(f"{folder}: manifest does not list {CONFIG_NAME}")
    return tuple(sorted(entries))


def load_checkpoint(name_or_dir: str | os.PathLike) -> Checkpoint:
    folder = resolve(name_or_dir)
    files = verify(folder)
    try:
        config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG_NAME}: not valid JSON ({e})") from None
    return Checkpoint(folder=folder, config=config, files=files)


M = TypeVar("M", bound="PretrainedMixin")


class PretrainedMixin:
    """For `nn.Module`s built from one Config: `save_pretrained` / `from_pretrained`."""

    config_class: ClassVar[type[Config]]
    config: Config

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the model computes in: its first floating parameter's (an int8-quantized
        Linear packs its weight outside `parameters()`; embeddings and norms stay float)."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())  # type: ignore[attr-defined]

    def save_pretrained(
        self, folder: str | os.PathLike, extra_files: Mapping[str, bytes] | None = None, dtype: str = "fp32"
    ) -> Path:
        """`dtype`: how the floating tensors are stored (one of STORE_DTYPES; upcast at load)."""
        return save_checkpoint(folder, self.config, {"model": stored(self.state_dict(), dtype)}, extra_files)

    @classmethod
    def from_pretrained(cls: type[M], name_or_dir: str | os.PathLike) -> M:
        ckpt = load_checkpoint(name_or_dir)
        model = cls.uninitialised(ckpt)
        load_state_strict(model, ckpt.weights("model"), where=str(ckpt.folder), assign=True)
        return model.eval()

    @classmethod
    def uninitialised(cls: type[M], ckpt: Checkpoint) -> M:
        """The model `ckpt`'s config describes, built under no_init() (its weights to be assigned)."""
        try:
            config = cls.config_class.from_dict(ckpt.config, where=str(ckpt.folder / CONFIG_NAME))
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        with no_init():
            return cls(config)  # type: ignore[call-arg]


STORE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def stored(state: Mapping[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """`state` with its floating tensors as STORE_DTYPES[dtype] (what a checkpoint stores)."""
    if dtype not in STORE_DTYPES:
        raise ConfigError(f"dtype is {dtype!r}; accepted: {', '.join(STORE_DTYPES)}")
    return {k: v.to(STORE_DTYPES[dtype]) if v.is_floating_point() else v for k, v in state.items()}


INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_",
                  "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_")


@contextlib.contextmanager
def no_init() -> Iterator[None]:
    """Build modules without drawing their initial weights (torch.nn.init does nothing inside):
    a checkpoint is about to replace them. Drawing aMUSEd-256's 873M random numbers took 9 s of
    a 13 s load; the untouched torch.empty memory costs nothing. Not thread-safe: load models
    before serving requests."""
    saved = {name: getattr(torch.nn.init, name) for name in INIT_FUNCTIONS}
    for name in INIT_FUNCTIONS:
        setattr(torch.nn.init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], where: str,
                      assign: bool = False) -> None:
    """load_state_dict with one readable error for missing/unexpected keys or wrong shapes.
    `assign`: the module takes `state`'s tensors (cast to its dtypes) instead of copying them,
    for a module built under no_init()."""
    own = module.state_dict()
    check_state(own, state, where)
    if assign:
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


def check_state(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor], where: str) -> None:
    """CheckpointError unless `state` has exactly the keys and shapes of `own`."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{where}: weights do not match the config "
            f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''})"
        )
    for k, v in state.items():
        if own[k].shape != v.shape:
            raise CheckpointError(
                f"{where}: weight {k} has shape {tuple(v.shape)}, the config gives {tuple(own[k].shape)}"
            )


DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"


def read_diffusers_folder(folder: str | os.PathLike, class_names: str | tuple[str, ...]
                          ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """config.json (whose _class_name must be one of `class_names`) and the safetensors weights
    of a diffusers model folder. Pickle-only folders are refused: their files can run code."""
    class_names = (class_names,) if isinstance(class_names, str) else class_names
    folder = Path(folder)
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read a diffusers config ({e})") from None
    if not isinstance(cfg, dict) or cfg.get("_class_name") not in class_names:
        got = cfg.get("_class_name") if isinstance(cfg, dict) else None
        accepted = " or ".join(map(repr, class_names))
        raise CheckpointError(f"{path}: _class_name is {got!r}; accepted: {accepted}")
    weights = folder / DIFFUSERS_WEIGHTS
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise CheckpointError(
                f"{folder}: refusing to load pickle-based weights ({', '.join(pickles)}); where you trust "
                f"the file, convert it: python -c \"import torch, safetensors.torch as s; "
                f"s.save_file(torch.load('{folder / pickles[0]}', weights_only=True), "
                f"'{weights}')\"")
        raise CheckpointError(f"{folder}: {DIFFUSERS_WEIGHTS} not found")
    try:
        return cfg, load_file(str(weights))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f"{weights}: unreadable safetensors ({e})") from None
