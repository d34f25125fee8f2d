"""Load a diffusers `VQModel` folder (aMUSEd's and Meissonic's `vqvae/`) into VQTokenizer.

Our modules use diffusers' parameter names, so the weights load as they are; only the
config is translated. diffusers itself is not needed. aMUSEd feeds its VQ-GAN images in
[0, 1] (its image processor does not normalise), hence pixel_range "0..1" by default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError
from ..hub import load_state_strict, no_init, read_diffusers_folder
from .model import VQConfig, VQTokenizer

# keys diffusers accepts but that do not change the network
IGNORED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "sample_size",
           "scaling_factor", "lookup_from_codebook", "force_upcast"}
# attention names of old diffusers checkpoints -> current ones
OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                 ".proj_attn.": ".to_out.0."}


def read_diffusers_config(folder: Path) -> dict[str, Any] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return cfg if isinstance(cfg, dict) and cfg.get("_class_name") == "VQModel" else None


def config_from_diffusers(cfg: dict[str, Any], pixel_range: str = "0..1") -> VQConfig:
    def need(key: str, expected: Any, default: Any) -> None:
        value = cfg.get(key, default)
        ok = value == expected if not callable(expected) else expected(value)
        if not ok:
            raise ConfigError(f"diffusers VQModel: {key}={value!r} is not supported "
                              f"(fastmuse loads {expected if not callable(expected) else 'standard'} blocks)")

    need("act_fn", "silu", "silu")
    need("norm_type", "group", "group")
    need("down_block_types", lambda v: all(t == "DownEncoderBlock2D" for t in v), ["DownEncoderBlock2D"])
    need("up_block_types", lambda v: all(t == "UpDecoderBlock2D" for t in v), ["UpDecoderBlock2D"])
    known = IGNORED | {"act_fn", "norm_type", "down_block_types", "up_block_types", "in_channels",
                       "out_channels", "block_out_channels", "layers_per_block", "latent_channels",
                       "num_vq_embeddings", "norm_num_groups", "vq_embed_dim",
                       "mid_block_add_attention"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"diffusers VQModel: unknown config key '{unknown[0]}'")
    latent = cfg.get("latent_channels", 3)
    return VQConfig(
        in_channels=cfg.get("in_channels", 3),
        out_channels=cfg.get("out_channels", 3),
        block_out_channels=tuple(cfg.get("block_out_channels", (64,))),
        layers_per_block=cfg.get("layers_per_block", 1),
        latent_channels=latent,
        vq_embed_dim=cfg.get("vq_embed_dim") or latent,
        num_vq_embeddings=cfg.get("num_vq_embeddings", 256),
        norm_num_groups=cfg.get("norm_num_groups", 32),
        mid_block_add_attention=cfg.get("mid_block_add_attention", True),
        quantizer="st",
        pixel_range=pixel_range,  # type: ignore[arg-type]
    )


def load_diffusers_vq(folder: str | Path, pixel_range: str = "0..1") -> VQTokenizer:
    folder = Path(folder)
    cfg, state = read_diffusers_folder(folder, "VQModel")
    try:
        config = config_from_diffusers(cfg, pixel_range)
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    for old, new in OLD_ATTENTION.items():
        state = {k.replace(old, new): v for k, v in state.items()}
    with no_init():
        model = VQTokenizer(config)
    load_state_strict(model, state, where=str(folder), assign=True)
    return model.eval()
