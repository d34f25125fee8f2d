"""Load an aMUSEd `transformer/` folder (diffusers `UVit2DModel`) into our UViT.

Key table: the identity. models/uvit.py names every parameter as diffusers does
(`transformer_layers.3.attn2.to_k.weight`, `down_block.res_blocks.0.cond_embeds_mapper.weight`,
...), so the state dict loads as it is and a strict load proves that every tensor found its
place. The config keys are diffusers' too; only the ones that do not change the network are
dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..hub import load_state_strict, read_diffusers_folder
from .uvit import UViT, UViTConfig

# keys diffusers writes that do not change the network (dropout is 0 at inference)
IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "hidden_dropout", "attention_dropout"}
OURS = {"micro_conds", "text_encoder", "tokenizer", "resolution"}


def uvit_config_from_diffusers(cfg: dict[str, Any], downsampling: int = 16) -> UViTConfig:
    """diffusers UVit2DModel config -> UViTConfig; `downsampling`: the VQ model's factor."""
    fields = {f.name for f in dataclasses.fields(UViTConfig)} - OURS
    unknown = sorted(set(cfg) - fields - IGNORED)
    if unknown:
        raise ConfigError(f"UVit2DModel config key {unknown[0]!r} is not one fastmuse knows "
                          f"(a newer or different architecture)")
    args = {k: v for k, v in cfg.items() if k in fields}
    size = args.get("sample_size", UViTConfig.sample_size)
    if args.get("downsample", False) != args.get("upsample", False):
        raise ConfigError("UVit2DModel with downsample != upsample: its output grid would not be its input's")
    res = size * downsampling
    # AmusedPipeline's micro-conditions: the output size, no crop, aesthetic score 6
    return UViTConfig(**args, resolution=res, micro_conds=(float(res), float(res), 0.0, 0.0, 6.0))


def load_diffusers_uvit(folder: str | Path, downsampling: int = 16) -> UViT:
    folder = Path(folder)
    cfg, state = read_diffusers_folder(folder, "UVit2DModel")
    try:
        config = uvit_config_from_diffusers(cfg, downsampling)
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{folder}: {e}") from None
    model = UViT(config)
    load_state_strict(model, state, where=str(folder))
    return model.eval()
