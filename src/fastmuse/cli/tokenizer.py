"""`fastmuse tokenizer ...` and `fastmuse train tokenizer`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..fsutil import atomic_write_text
from .common import WEIGHT_DTYPES, add_train_parser, load_train_config, positive

DEFAULT_TOKENIZER = "tokenizer-v2"


def cmd_train(a: argparse.Namespace) -> None:
    from ..train.tokenizer import TokenizerTrainConfig, train_tokenizer

    print(f"wrote {train_tokenizer(load_train_config(TokenizerTrainConfig, a), a.out, resume=a.resume)}")


def cmd_recon(a: argparse.Namespace) -> None:
    from ..eval.tokenizer import reconstruct
    from ..tokenizer import VQTokenizer

    model = VQTokenizer.from_pretrained(a.model)
    image = reconstruct(model, a.image, a.resolution)
    Path(a.output).parent.mkdir(parents=True, exist_ok=True)
    image.save(a.output)
    print(f"wrote {a.output} ({a.resolution}px round trip through {a.model})")


def cmd_eval(a: argparse.Namespace) -> None:
    from ..eval.tokenizer import (
        check_resolution,
        evaluate_recon,
        flat_consistency,
        load_val_images,
        recon_grid,
    )
    from ..tokenizer import VQTokenizer

    model = VQTokenizer.from_pretrained(a.model)
    check_resolution(model, a.resolution)
    images = load_val_images(a.data, a.resolution, a.n, split=a.split)
    metrics = evaluate_recon(model, images)
    recon = metrics.pop("recon")
    metrics.update(model=str(a.model), data=str(a.data), split=a.split, resolution=a.resolution,
                   flat=flat_consistency(model))
    print(json.dumps(metrics, indent=2))
    if a.output:
        atomic_write_text(a.output, json.dumps(metrics, indent=2) + "\n")
    if a.grid:
        recon_grid(images, recon, n=32).save(a.grid)


def cmd_export(a: argparse.Namespace) -> None:
    from ..eval.tokenizer import export_tokenizer, load_val_images

    card = Path(a.card).read_text(encoding="utf-8") if a.card else None
    images = load_val_images(a.data, a.resolution, a.n)
    print(json.dumps(export_tokenizer(a.model, a.out, images, a.dtype, card, a.flat_snap), indent=2))
    print(f"wrote {a.out}")


def register(sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction) -> None:
    add_train_parser(train_sub, "tokenizer", "train a VQ image tokenizer",
                     "Train a VQ tokenizer from a TokenizerTrainConfig JSON (see configs/tokenizer-v2.json).",
                     "run folder: metrics.jsonl, samples/, checkpoints/, tokenizer/", cmd_train)

    tok = sub.add_parser("tokenizer", help="use a VQ image tokenizer")
    tsub = tok.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)
    r = tsub.add_parser("recon", help="round-trip one image through the tokenizer",
                        description="Encode an image to tokens and decode it back. The image is "
                                    "made RGB on white, its shorter side resized to --resolution "
                                    "and center-cropped square.")
    r.add_argument("--image", required=True, help="input image (any size or mode)")
    r.add_argument("-o", "--output", required=True, help="PNG to write")
    r.add_argument("--model", default=DEFAULT_TOKENIZER,
                   help=f"tokenizer folder, bundled name or diffusers VQModel folder "
                        f"(default {DEFAULT_TOKENIZER})")
    r.add_argument("--resolution", type=positive("--resolution"), default=128)
    r.set_defaults(func=cmd_recon)

    e = tsub.add_parser("eval", help="PSNR, SSIM, code statistics and token consistency",
                        description="Reconstruct a folder dataset's split and report PSNR, SSIM "
                                    "(on [0,1] images), codebook usage and code entropy / "
                                    "perplexity as JSON, plus token consistency: for flat "
                                    "images of white and each shapes-world colour at 64, 128 "
                                    "and 256 px, the share of positions holding the modal code "
                                    "(1.0: the same content gets the same code everywhere).")
    e.add_argument("--model", default=DEFAULT_TOKENIZER, help="tokenizer folder or bundled name")
    e.add_argument("--data", required=True, help="folder dataset")
    e.add_argument("--split", choices=["train", "val"], default="val")
    e.add_argument("--n", type=positive("--n"), default=None, help="at most N images (default all)")
    e.add_argument("--resolution", type=positive("--resolution"), default=128)
    e.add_argument("-o", "--output", default=None, help="also write the JSON here")
    e.add_argument("--grid", default=None, help="write a reconstruction grid PNG here")
    e.set_defaults(func=cmd_eval)

    x = tsub.add_parser("export", help="write a tokenizer folder with fp16/bf16 weights and a card",
                        description="Copy a tokenizer (a run's tokenizer/ folder or any tokenizer "
                                    "folder) to OUT, its floating tensors stored as --dtype (upcast "
                                    "at load), with a reconstruction grid of --data's val split and "
                                    "--card as README.md. Prints the share of tokens that the copy "
                                    "changes and the PSNR before and after.")
    x.add_argument("--model", required=True, help="tokenizer folder or bundled name")
    x.add_argument("--out", required=True, help="folder to write")
    x.add_argument("--dtype", choices=WEIGHT_DTYPES, default="fp16")
    x.add_argument("--data", default="data/emoji", help="folder dataset whose val split is measured")
    x.add_argument("--n", type=positive("--n"), default=None, help="at most N val images (default all)")
    x.add_argument("--resolution", type=positive("--resolution"), default=128)
    x.add_argument("--card", default=None, help="markdown file written as the folder's README.md")
    x.add_argument("--flat-snap", type=float, default=None, metavar="TOL",
                   help="set the copy's flat_snap: patches flat within TOL (in [-1, 1] units) get "
                        "their colour's code (default: keep the source's)")
    x.set_defaults(func=cmd_export)
