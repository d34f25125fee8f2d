import json
import os

from ..errors import CheckpointError
from ..hub import CONFIG_NAME, load_checkpoint, resolve
from ..int8 import is_int8_folder, load_int8
from .autoregressive import ARTransformer, ARTransformerConfig
from .dit import DiT, DiTConfig
from .mmdit import MMDiT, MMDiTConfig
from .transformer import MaskedTransformer, MaskedTransformerConfig, TextContext
from .uvit import UViT, UViTConfig

Transformer = MaskedTransformer | UViT | MMDiT  # what a pipeline samples from
TRANSFORMERS: dict[str, type[Transformer] | type[DiT]] = {
    MaskedTransformerConfig.kind: MaskedTransformer, ARTransformerConfig.kind: ARTransformer,
    UViTConfig.kind: UViT, MMDiTConfig.kind: MMDiT, DiTConfig.kind: DiT}


def transformer_kind(name_or_dir: str | os.PathLike) -> str:
    """The `kind` a transformer folder's config.json names (masked_transformer, ar_transformer,
    uvit, mmdit, dit)."""
    path = resolve(name_or_dir) / CONFIG_NAME
    try:
        kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        raise CheckpointError(f"{path}: cannot read the model config ({e})") from None
    if kind not in TRANSFORMERS:
        raise CheckpointError(f"{path}: 'kind' is {kind!r}; accepted: {', '.join(TRANSFORMERS)}")
    return kind


def load_transformer(name_or_dir: str | os.PathLike) -> MaskedTransformer:
    """A masked, autoregressive, U-ViT, MMDiT or diffusion transformer, whichever the folder holds
    (a folder written pre-quantized comes back with its int8 Linears)."""
    model_class = TRANSFORMERS[transformer_kind(name_or_dir)]
    if not is_int8_folder(resolve(name_or_dir)):
        return model_class.from_pretrained(name_or_dir)
    ckpt = load_checkpoint(name_or_dir)
    return load_int8(model_class.uninitialised(ckpt), ckpt.weights("model"), str(ckpt.folder))


__all__ = ["ARTransformer", "ARTransformerConfig", "DiT", "DiTConfig", "MaskedTransformer",
           "MaskedTransformerConfig", "MMDiT", "MMDiTConfig", "TextContext", "Transformer", "TRANSFORMERS",
           "UViT", "UViTConfig", "load_transformer", "transformer_kind"]
