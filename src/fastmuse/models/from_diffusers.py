"""Load the `transformer/` folder of a public masked model into our modules:
aMUSEd (diffusers `UVit2DModel`) -> models/uvit.UViT, Meissonic (its `Transformer2DModel`)
-> models/mmdit.MMDiT.

Key table: the identity. Our modules name every parameter as the reference does
(`transformer_layers.3.attn2.to_k.weight`, `single_transformer_blocks.0.attn.norm_q.weight`, ...),
so the state dict loads as it is and a strict load proves that every tensor found its place.
The config keys are the reference's too; only the ones that do not change the network are
dropped, and an unknown key (a newer or different architecture) is an error.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..config import Config
from ..errors import CheckpointError, ConfigError
from ..hub import load_state_strict, no_init, read_diffusers_folder
from .mmdit import MMDiT
from .uvit import UViT

# keys the references write that do not change the network (dropout is 0 at inference)
IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "hidden_dropout",
           "attention_dropout"}
OURS = {"micro_conds", "text_encoder", "tokenizer", "resolution"}
# class name in transformer/config.json -> our model
ARCHITECTURES: dict[str, type[UViT | MMDiT]] = {"UVit2DModel": UViT, "Transformer2DModel": MMDiT}
MEISSONIC_GRID = 64  # 1024 px through the f16 VQ-GAN, what its pipeline runs at


def config_from_diffusers(model: type[UViT | MMDiT], cfg: dict[str, Any], downsampling: int) -> Config:
    """A reference transformer config -> ours; `downsampling`: the VQ model's factor."""
    fields = {f.name for f in dataclasses.fields(model.config_class)} - OURS
    unknown = sorted(set(cfg) - fields - IGNORED)
    if unknown:
        raise ConfigError(f"{cfg.get('_class_name')} config key {unknown[0]!r} is not one fastmuse knows "
                          f"(a newer or different architecture)")
    args = {k: v for k, v in cfg.items() if k in fields}
    if model is MMDiT:
        args.setdefault("sample_size", MEISSONIC_GRID)
    if args.get("downsample", False) != args.get("upsample", False):
        raise ConfigError("downsample != upsample: the output grid would not be the input's")
    res = args.get("sample_size", model.config_class.sample_size) * downsampling
    # the reference pipelines' micro-conditions: the output size, no crop, aesthetic score 6
    return model.config_class(**args, resolution=res, micro_conds=(float(res), float(res), 0.0, 0.0, 6.0))


def load_diffusers_transformer(folder: str | Path, downsampling: int = 16) -> UViT | MMDiT:
    folder = Path(folder)
    cfg, state = read_diffusers_folder(folder, tuple(ARCHITECTURES))
    model_class = ARCHITECTURES[cfg["_class_name"]]
    try:
        config = config_from_diffusers(model_class, cfg, downsampling)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder}: {e}") from None
    with no_init():
        model = model_class(config)
    load_state_strict(model, state, where=str(folder), assign=True)
    return model.eval()

