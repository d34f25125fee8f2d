"""Public checkpoints in and out: aMUSEd / Meissonic folders <-> fastmuse model folders.

    convert_public(SRC, OUT)   aMUSEd or Meissonic folder -> our format: the transformer
                               (config.json kind "uvit" / "mmdit" + model.safetensors +
                               manifest), tokenizer/ (the VQ-GAN as our VQTokenizer),
                               text_encoder/ (the CLIP text model and its tokenizer files),
                               sampler.json (the reference's sampling defaults); with
                               precision "int8" (any source, ours too) the transformer is
                               stored pre-quantized, with "fp16" in half precision
    export_amused(MODEL, OUT)  the reverse: a folder diffusers' AmusedPipeline loads

Weights keep their names both ways (models/uvit.py and tokenizer/model.py use diffusers'
parameter names), so nothing is re-keyed; configs are translated.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError, ConfigError
from .fsutil import atomic_dir
from .hub import CONFIG_NAME, DIFFUSERS_WEIGHTS, MANIFEST_NAME, PICKLE_SUFFIXES, resolve, verify
from .int8 import QUANT_FILE, is_int8_folder
from .models.uvit import UViT
from .pipeline import SAMPLER_FILE, Pipeline
from .tokenizer import VQTokenizer

DIFFUSERS_VERSION = "0.42.1"  # written into exported configs: the diffusers these were checked with
# what a text encoder folder may hold (weights only as safetensors)
TEXT_FILES = (".json", ".txt", ".model", ".safetensors")
CONVERT_PRECISIONS = ("fp32", "fp16", "int8")


def folder_files(folder: Path, prefix: str) -> dict[str, bytes]:
    """Every file under `folder` as {prefix/relative path: bytes}: extra files of a model folder."""
    return {f"{prefix}/{p.relative_to(folder).as_posix()}": p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _text_files(folder: Path) -> dict[str, bytes]:
    pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickles and not any(p.suffix == ".safetensors" for p in folder.iterdir()):
        raise CheckpointError(f"{folder}: pickle-only weights ({pickles[0]}); save them as safetensors "
                              f"first, where you trust the file (transformers: "
                              f"model.save_pretrained(dir, safe_serialization=True))")
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and p.suffix in TEXT_FILES}


def convert_public(src: str | os.PathLike, out: str | os.PathLike, precision: str = "fp32") -> Path:
    """An aMUSEd or Meissonic folder, or a fastmuse model (folder or bundled name) -> a fastmuse
    model folder; `precision` "int8" stores the transformer pre-quantized (int8.py), "fp16" its
    floating weights in half precision (half the file; computed in fp32 or the precision asked for
    at load, as bundled models are). Loaded fully first: a broken source fails here, before
    anything is written."""
    if precision not in CONVERT_PRECISIONS:
        raise ConfigError(f"precision is {precision!r}; accepted: {', '.join(CONVERT_PRECISIONS)}")
    folder = resolve(src)
    pipe = Pipeline.from_pretrained(folder, precision="int8" if precision == "int8" else "fp32")
    if (folder / "transformer").is_dir():
        files, card = _public_files(folder, pipe), _public_card(folder, out, pipe)
    else:  # ours: every other file travels unchanged
        rewritten = {CONFIG_NAME, MANIFEST_NAME, "model.safetensors", SAMPLER_FILE, "README.md", QUANT_FILE}
        files = {f: (folder / f).read_bytes() for f in verify(folder) if f not in rewritten}
        card_path = folder / "README.md"
        card = card_path.read_text(encoding="utf-8") if card_path.is_file() else f"# {folder.name}\n"
    if precision == "int8" and not is_int8_folder(folder):  # an int8 source's card says so already
        card += (f"\n## int8\n\nWritten by `fastmuse convert {src} {out} --precision int8`: every Linear "
                 "layer of the transformer stored as int8 weights with one scale per output channel "
                 "(quantization.json); it loads only with `--precision int8` or `auto`.\n")
    return pipe.save_pretrained(out, card, files, dtype="fp16" if precision == "fp16" else "fp32")


def _public_files(src: Path, pipe: Pipeline) -> dict[str, bytes]:
    files = {f"text_encoder/{k}": v for k, v in _text_files(src / "text_encoder").items()}
    if (src / "tokenizer").is_dir():  # diffusers keeps the text tokenizer beside the encoder
        files.update({f"text_encoder/{k}": v for k, v in _text_files(src / "tokenizer").items()})
    backend = getattr(pipe.text_encoder.tokenizer, "backend_tokenizer", None)  # a transformers fast tokenizer
    if "text_encoder/tokenizer.json" not in files and backend is not None:
        files["text_encoder/tokenizer.json"] = backend.to_str().encode()  # so it loads without transformers
    with tempfile.TemporaryDirectory() as tmp:
        files.update(folder_files(pipe.tokenizer.save_pretrained(Path(tmp) / "vq"), "tokenizer"))
    return files


def _public_card(src: Path, out: str | os.PathLike, pipe: Pipeline) -> str:
    cfg = pipe.transformer.config
    arch = "U-ViT (aMUSEd)" if cfg.kind == UViT.config_class.kind else "MMDiT (Meissonic)"
    params = sum(p.numel() for p in pipe.transformer.parameters()) / 1e6
    return (f"# {src.name} (converted)\n\nConverted by `fastmuse convert {src} {out}`: "
            f"{arch} transformer ({params:.0f}M parameters, {cfg.grid}x{cfg.grid} tokens, "
            f"{cfg.resolution} px), VQ-GAN in tokenizer/, CLIP text encoder in text_encoder/. "
            "Weights unchanged; licence: the source's.\n")


def _vq_config_to_diffusers(tok: VQTokenizer) -> dict:
    c = tok.config
    if c.pixel_range != "0..1" or c.quantizer != "st" or c.l2_normalize:
        raise CheckpointError("this image tokenizer cannot be written as a diffusers VQModel: diffusers' "
                              "reads [0, 1] pixels with a plain nearest-code quantizer (pixel_range "
                              f"{c.pixel_range!r}, quantizer {c.quantizer!r}, l2_normalize {c.l2_normalize})")
    n = len(c.block_out_channels)
    return {"_class_name": "VQModel", "_diffusers_version": DIFFUSERS_VERSION, "act_fn": "silu",
            "block_out_channels": list(c.block_out_channels), "down_block_types": ["DownEncoderBlock2D"] * n,
            "up_block_types": ["UpDecoderBlock2D"] * n, "in_channels": c.in_channels,
            "out_channels": c.out_channels, "latent_channels": c.latent_channels,
            "layers_per_block": c.layers_per_block, "lookup_from_codebook": True,
            "mid_block_add_attention": c.mid_block_add_attention, "norm_num_groups": c.norm_num_groups,
            "norm_type": "group", "num_vq_embeddings": c.num_vq_embeddings, "vq_embed_dim": c.vq_embed_dim}


def _uvit_config_to_diffusers(model: UViT) -> dict:
    ours = {"micro_conds", "text_encoder", "tokenizer", "resolution"}
    cfg = {k: v for k, v in model.config.to_dict().items() if k not in ours | {"kind", "format_version"}}
    return {"_class_name": "UVit2DModel", "_diffusers_version": DIFFUSERS_VERSION, **cfg}


def export_amused(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """A fastmuse U-ViT model folder -> an aMUSEd folder diffusers loads (AmusedPipeline)."""
    from safetensors.torch import save_file

    pipe = Pipeline.from_pretrained(model)
    if not isinstance(pipe.transformer, UViT):
        raise CheckpointError(f"{model}: --format diffusers writes aMUSEd folders, which hold a U-ViT "
                              f"transformer; this model is a {pipe.transformer.config.kind!r}")
    text_dir = resolve(model) / pipe.transformer.config.text_encoder
    if not text_dir.is_dir():
        raise CheckpointError(f"{model}: the text encoder {pipe.transformer.config.text_encoder!r} is not a "
                              "folder inside the model; aMUSEd folders carry their CLIP text encoder")
    vq_cfg = _vq_config_to_diffusers(pipe.tokenizer)
    text = _text_files(text_dir)
    tok_names = {"tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "merges.txt",
                 "special_tokens_map.json", "added_tokens.json", "spiece.model"}
    tok_class = json.loads(text.get("tokenizer_config.json", b"{}")).get("tokenizer_class", "CLIPTokenizer")
    index = {"_class_name": "AmusedPipeline", "_diffusers_version": DIFFUSERS_VERSION,
             "scheduler": ["diffusers", "AmusedScheduler"],
             "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", tok_class.removesuffix("Fast")],
             "transformer": ["diffusers", "UVit2DModel"], "vqvae": ["diffusers", "VQModel"]}
    scheduler = {"_class_name": "AmusedScheduler", "_diffusers_version": DIFFUSERS_VERSION,
                 "mask_token_id": pipe.transformer.mask_id, "masking_schedule": "cosine"}

    def dump(obj: dict) -> str:
        return json.dumps(obj, indent=2) + "\n"

    with atomic_dir(Path(out)) as tmp:
        for sub in ("transformer", "vqvae", "text_encoder", "tokenizer", "scheduler"):
            (tmp / sub).mkdir()
        (tmp / "model_index.json").write_text(dump(index))
        (tmp / "scheduler/scheduler_config.json").write_text(dump(scheduler))
        (tmp / "transformer/config.json").write_text(dump(_uvit_config_to_diffusers(pipe.transformer)))
        save_file({k: v.contiguous() for k, v in pipe.transformer.state_dict().items()},
                  str(tmp / "transformer" / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
        (tmp / "vqvae/config.json").write_text(dump(vq_cfg))
        save_file({k: v.contiguous() for k, v in pipe.tokenizer.state_dict().items()},
                  str(tmp / "vqvae" / DIFFUSERS_WEIGHTS), metadata={"format": "pt"})
        for name, data in text.items():
            (tmp / ("tokenizer" if name in tok_names else "text_encoder") / name).write_bytes(data)
    return Path(out)
