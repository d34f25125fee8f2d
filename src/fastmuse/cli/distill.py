"""`fastmuse distill dimo`: one-step students of masked models; `fastmuse distill dmd`: one- and
few-step students of pixel diffusion models."""

from __future__ import annotations

import argparse

from .common import positive


def cmd_dimo(a: argparse.Namespace) -> None:
    from ..distill.dimo_train import DiMOConfig, distill_dimo

    cfg = DiMOConfig.load(a.config) if a.config else DiMOConfig()
    overrides = {k: v for k, v in (("teacher", a.teacher), ("steps", a.steps), ("batch_size", a.batch_size))
                 if v is not None}
    print(f"wrote {distill_dimo(cfg.replace(**overrides), a.out, resume=a.resume)}")


def cmd_dmd(a: argparse.Namespace) -> None:
    from ..distill.dmd_train import DMDConfig, distill_dmd

    cfg = DMDConfig.load(a.config) if a.config else DMDConfig()
    overrides = {k: v for k, v in (("teacher", a.teacher), ("student_steps", a.student_steps),
                                   ("method", a.method), ("steps", a.steps), ("batch_size", a.batch_size))
                 if v is not None}
    print(f"wrote {distill_dmd(cfg.replace(**overrides), a.out, resume=a.resume)}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a model into a faster student")
    dsub = p.add_subparsers(dest="distill_command", metavar="METHOD", required=True)
    d = dsub.add_parser(
        "dimo", help="Di[M]O: a one-step student of a masked model",
        description="Distil a masked text-to-image model into a one-step generator by token-level "
                    "distribution matching against an auxiliary model trained online (Di[M]O). "
                    "Prompts are the captions of the config's data. Writes RUN/metrics.jsonl, "
                    "RUN/samples/, RUN/checkpoints/ and, at the end, RUN/student: a model folder "
                    "that generate, edit, eval and serve load.")
    d.add_argument("--teacher", default=None, help="bundled name or model folder (default: the config's, "
                   "muse-128); an aMUSEd/Meissonic folder must be converted first (fastmuse convert)")
    d.add_argument("--out", required=True, help="run folder")
    d.add_argument("--config", default=None, help="DiMOConfig JSON (default: the built-in defaults)")
    d.add_argument("--steps", type=positive("--steps"), default=None, help="student updates (override)")
    d.add_argument("--batch-size", type=positive("--batch-size"), default=None, help="override")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    d.set_defaults(func=cmd_dimo)

    d = dsub.add_parser(
        "dmd", help="DMD / DMD2: a one- or few-step student of a diffusion model",
        description="Distil a pixel diffusion model (e.g. dit-128) into a 1-, 2- or 4-step generator by "
                    "distribution matching: the teacher's guided denoiser against a fake denoiser trained "
                    "online on the student's samples (DMD2: several fake updates per student update, a "
                    "GAN head on the fake denoiser, backward simulation for multi-step students; DMD: "
                    "plus a regression loss on teacher ODE pairs). Writes RUN/metrics.jsonl, "
                    "RUN/samples/, RUN/checkpoints/ and, at the end, RUN/student: a model folder that "
                    "generate, eval and serve load.")
    d.add_argument("--teacher", default=None, help="bundled name or model folder of a diffusion model "
                   "(default: the config's, dit-128)")
    d.add_argument("--out", required=True, help="run folder")
    d.add_argument("--config", default=None, help="DMDConfig JSON (default: the built-in defaults)")
    d.add_argument("--method", choices=("dmd2", "dmd"), default=None, help="override the config's")
    d.add_argument("--student-steps", type=int, choices=(1, 2, 4), default=None,
                   help="sampling steps of the student (override)")
    d.add_argument("--steps", type=positive("--steps"), default=None, help="generator updates (override)")
    d.add_argument("--batch-size", type=positive("--batch-size"), default=None, help="override")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    d.set_defaults(func=cmd_dmd)
