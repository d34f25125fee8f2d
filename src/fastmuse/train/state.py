"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A training checkpoint is an ordinary checkpoint folder (hub.py: config.json, manifest,
atomic write) whose weights also hold optimizer states (flattened to `state.<i>.<name>`)
and RNG states, and whose `trainer_state.json` holds the step, learning-rate schedule
position, optimizer param_groups and any JSON-able extras. Resuming restores all of it.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import CheckpointError, DataError
from ..fsutil import remove_stale_temps
from ..hub import load_checkpoint, save_checkpoint

TRAINER_STATE = "trainer_state.json"


def flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Optimizer state_dict -> (tensors, JSON). Non-tensor per-parameter entries go to JSON."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{pid}.{name}"] = value
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def unflatten_optimizer(opt: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                        meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    groups = meta["param_groups"]
    for g in groups:  # JSON turned tuples (betas) into lists
        for k, v in g.items():
            if isinstance(v, list) and k != "params":
                g[k] = tuple(v)
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_state(generators: Mapping[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], Any]:
    tensors = {"torch": torch.get_rng_state()}
    tensors.update({f"gen.{k}": g.get_state() for k, g in generators.items()})
    return tensors, random.getstate()


def set_rng_state(tensors: Mapping[str, torch.Tensor], py_state: Any,
                  generators: Mapping[str, torch.Generator]) -> None:
    torch.set_rng_state(tensors["torch"])
    for k, g in generators.items():
        g.set_state(tensors[f"gen.{k}"])
    version, internal, gauss = py_state
    random.setstate((version, tuple(internal), gauss))


def save_training(folder: str | Path, config: Config, modules: Mapping[str, torch.nn.Module],
                  optimizers: Mapping[str, torch.optim.Optimizer],
                  generators: Mapping[str, torch.Generator], step: int,
                  extra: dict[str, Any] | None = None,
                  buffers: Mapping[str, torch.Tensor] | None = None) -> Path:
    """`buffers`: tensors outside any state_dict that the run needs back (e.g. counters)."""
    weights: dict[str, dict[str, torch.Tensor]] = {k: m.state_dict() for k, m in modules.items()}
    weights["buffers"] = dict(buffers or {})
    opt_meta = {}
    for name, opt in optimizers.items():
        weights[f"optimizer_{name}"], opt_meta[name] = flatten_optimizer(opt)
    weights["rng"], py_state = rng_state(generators)
    state = {"step": step, "optimizers": opt_meta, "python_random": py_state, **(extra or {})}
    return save_checkpoint(folder, config, weights,
                           {TRAINER_STATE: (json.dumps(state) + "\n").encode()})


def load_training(folder: str | Path, modules: Mapping[str, torch.nn.Module],
                  optimizers: Mapping[str, torch.optim.Optimizer],
                  generators: Mapping[str, torch.Generator],
                  buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Restore everything `save_training` wrote (`buffers` are copied into in place);
    returns the trainer state (step, extras)."""
    ckpt = load_checkpoint(folder)
    if TRAINER_STATE not in ckpt.files:
        raise CheckpointError(f"{folder}: not a training checkpoint (no {TRAINER_STATE})")
    state = json.loads((ckpt.folder / TRAINER_STATE).read_text(encoding="utf-8"))
    for name, module in modules.items():
        module.load_state_dict(ckpt.weights(name), strict=True)
    for name, opt in optimizers.items():
        unflatten_optimizer(opt, ckpt.weights(f"optimizer_{name}"), state["optimizers"][name])
    set_rng_state(ckpt.weights("rng"), state["python_random"], generators)
    saved = ckpt.weights("buffers")
    for name, tensor in (buffers or {}).items():
        tensor.copy_(saved[name])
    return state


def checkpoint_to_resume(run_dir: str | Path, resume: bool, acc) -> Path | None:
    """The checkpoint a run continues from (None for a fresh run), checked by every rank
    before any of them writes: `--resume` needs one, a fresh run refuses a used folder."""
    run_dir = Path(run_dir)
    ckpt = latest_checkpoint(run_dir)
    if resume and ckpt is None:
        raise DataError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    if not resume and (run_dir / "checkpoints").exists():
        raise DataError(f"{run_dir} already holds a run; pass --resume or choose another --out")
    if resume and acc.is_main_process:  # what killed saves left: each as big as a checkpoint
        for stale in remove_stale_temps(run_dir) + remove_stale_temps(run_dir / "checkpoints"):
            acc.print(f"removed {stale} (left by an interrupted save)")
    acc.wait_for_everyone()
    return ckpt


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest `checkpoints/step-*` folder of a run (complete by construction: atomic)."""
    found = sorted(Path(run_dir).glob("checkpoints/step-*"))
    return found[-1] if found else None


def prune_checkpoints(run_dir: str | Path, keep: int) -> None:
    for old in sorted(Path(run_dir).glob("checkpoints/step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
