"""`fastmuse train transformer`, `fastmuse transformer eval|export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import ORDERS, WEIGHT_DTYPES, add_train_parser, bounded, interval, load_train_config, positive


def cmd_train(a: argparse.Namespace) -> None:
    from ..train.masked import TransformerTrainConfig, train_transformer

    print(f"wrote {train_transformer(load_train_config(TransformerTrainConfig, a), a.out, resume=a.resume)}")


def cmd_eval(a: argparse.Namespace) -> None:
    from ..fsutil import atomic_write_text
    from ..train.export import heldout_accuracy

    metrics = heldout_accuracy(a.model, a.config)
    print(json.dumps(metrics, indent=2))
    if a.output:
        atomic_write_text(a.output, json.dumps(metrics, indent=2) + "\n")


def cmd_export(a: argparse.Namespace) -> None:
    from ..pipeline import SamplerDefaults
    from ..train.export import export_run

    out = export_run(a.run, a.out, name=a.name or Path(a.out).name, notes=a.notes,
                     defaults=SamplerDefaults(steps=a.steps, guidance=a.guidance, top_k=a.top_k,
                                              temperature=a.temperature, order=a.order,
                                              guidance_interval=list(a.guidance_interval)), dtype=a.dtype,
                     reproduce=a.reproduce)
    print(f"wrote {out}")


def register(sub: argparse._SubParsersAction, train_sub: argparse._SubParsersAction) -> None:
    add_train_parser(train_sub, "transformer", "train a text-to-image transformer (masked, autoregressive or "
                     "diffusion)",
                     "Training from a TransformerTrainConfig JSON: its model's kind picks the objective "
                     "(masked tokens: configs/muse-128.json, next token: configs/ar-128.json, TrigFlow "
                     "diffusion on the tokenizer's latent: configs/dit-128-v2.json). "
                     "Images and captions are encoded once into the config's cache_dir first.",
                     "run folder: metrics.jsonl, samples/, checkpoints/, transformer/ (EMA weights)",
                     cmd_train)

    tr = sub.add_parser("transformer", help="evaluate or package a trained transformer")
    tsub = tr.add_subparsers(dest="transformer_command", metavar="ACTION", required=True)
    e = tsub.add_parser("eval", help="held-out masked-token loss and accuracy",
                        description="Masked-token cross-entropy and accuracy on the val split of a "
                                    "training config's data (fixed masks: cosine-schedule ratios and "
                                    "exactly 50%%), per source and overall, with the model's weights.")
    e.add_argument("--model", required=True, help="transformer folder or bundled name")
    e.add_argument("--config", required=True, help="the training config whose data to use")
    e.add_argument("-o", "--output", default=None, help="also write the JSON here")
    e.set_defaults(func=cmd_eval)
    x = tsub.add_parser("export", help="package a finished run as a model folder with a model card",
                        description="Copy a run's EMA transformer into a model folder with "
                                    "sampler defaults, held-out accuracy, loss curves, a sample grid "
                                    "and a model card (README.md).")
    x.add_argument("--run", required=True, help="finished training run folder")
    x.add_argument("--out", required=True, help="model folder to write (e.g. src/fastmuse/assets/NAME)")
    x.add_argument("--name", default=None, help="model name in the card (default: the folder name)")
    x.add_argument("--notes", default="", help="extra markdown for the card (e.g. wall time)")
    x.add_argument("--reproduce", default="",
                   help="the card's reproduce commands, one per line, for a model made by a chain of runs "
                        "(default: train configs/NAME.json, then export)")
    x.add_argument("--steps", type=positive("--steps"), default=12,
                   help="default decoding steps (autoregressive models: always one per token)")
    x.add_argument("--guidance", type=float, default=3.0, help="default guidance scale")
    x.add_argument("--temperature", type=bounded("--temperature", float, 0.0, None), default=1.0,
                   help="default sampling temperature (default 1)")
    x.add_argument("--top-k", type=bounded("--top-k", int, 0, None), default=0,
                   help="default top-k of an autoregressive model (0: all codes)")
    x.add_argument("--guidance-interval", type=interval, default=(0.0, 1.0), metavar="LO,HI",
                   help="default guided part of the steps, as fractions (default 0,1: every step)")
    x.add_argument("--order", choices=ORDERS, default="confidence",
                   help="default MaskGIT order: which tokens each step keeps (default confidence)")
    x.add_argument("--dtype", choices=WEIGHT_DTYPES, default="fp16",
                   help="how the weights are stored (default fp16: half the size; the card's "
                        "figures are made with the stored weights)")
    x.set_defaults(func=cmd_export)
