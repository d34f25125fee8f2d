"""`fastmuse convert` and `fastmuse export`: public checkpoint formats in and out."""

from __future__ import annotations

import argparse


def cmd_convert(a: argparse.Namespace) -> None:
    from ..convert import convert_public

    print(f"fastmuse: wrote {convert_public(a.src, a.out, a.precision)} (load it with --model {a.out})")


def cmd_export(a: argparse.Namespace) -> None:
    from ..convert import export_amused

    print(f"fastmuse: wrote {export_amused(a.model, a.out)} "
          "(diffusers: AmusedPipeline.from_pretrained(that folder))")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert an aMUSEd or Meissonic folder to fastmuse's format, "
                                       "or store a model as fp16 or int8",
                       description="Read an aMUSEd or Meissonic folder (transformer/ UVit2DModel or "
                                   "Transformer2DModel, vqvae/ VQModel, text_encoder/ CLIP, tokenizer/) "
                                   "and write one fastmuse model folder "
                                   "(safetensors + manifest; weights unchanged). Pickle-only weights are "
                                   "refused with the command that converts them where you trust the file. "
                                   "With --precision int8 (any source, a fastmuse folder or bundled name "
                                   "too) the transformer is stored pre-quantized: it loads straight into "
                                   "the int8 modules, without the quantization pass (aMUSEd-256 on 2 CPU "
                                   "cores: 13 s -> about 1 s).")
    p.add_argument("src", help="an aMUSEd or Meissonic folder, or a fastmuse model folder or bundled name")
    p.add_argument("out", help="the fastmuse model folder to write (written atomically)")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="fp32: weights as they are (default); fp16: the transformer's weights stored "
                        "in half precision (half the file, computed in fp32 or as --precision says at "
                        "load); int8: its Linear layers pre-quantized (per-channel int8; the folder then "
                        "loads only as int8)")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("export", help="write a model in another format (diffusers aMUSEd)",
                       description="Write a fastmuse U-ViT model (one converted from aMUSEd, or trained as "
                                   "one) as an aMUSEd folder that diffusers' AmusedPipeline loads.")
    p.add_argument("model", help="fastmuse model folder")
    p.add_argument("out", help="the folder to write (written atomically)")
    p.add_argument("--format", choices=["diffusers"], default="diffusers",
                   help="diffusers: model_index.json + transformer/ vqvae/ text_encoder/ tokenizer/ "
                        "scheduler/ (the only format so far)")
    p.set_defaults(func=cmd_export)
