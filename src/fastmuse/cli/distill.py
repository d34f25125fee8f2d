"""`fastmuse distill dimo`: one-step students of masked models; `fastmuse distill dmd` and
`fastmuse distill scm`: one- and few-step students of latent diffusion models."""

from __future__ import annotations

import argparse

from .common import add_device_arg, positive

RUN_FILES = ("Writes RUN/config.json, RUN/metrics.jsonl, RUN/samples/, RUN/checkpoints/ and, at the end, "
             "RUN/student: a model folder that generate, eval and serve load.")


def run(a: argparse.Namespace, module: str, config: str, function: str, names: tuple[str, ...]) -> None:
    """Load the config (or its defaults), apply the flags given, run."""
    import importlib

    mod = importlib.import_module(f"..distill.{module}", __package__)
    cls = getattr(mod, config)
    cfg = cls.load(a.config) if a.config else cls()
    overrides = {k: getattr(a, k) for k in ("teacher", "steps", "batch_size", *names)
                 if getattr(a, k) is not None}
    student = getattr(mod, function)(cfg.replace(**overrides), a.out, resume=a.resume, device=a.device)
    print(f"wrote {student}")


def add_run_args(d: argparse.ArgumentParser, teacher: str, config: str, steps: str) -> None:
    d.add_argument("--teacher", default=None, help=f"bundled name or model folder ({teacher})")
    d.add_argument("--out", required=True, help="run folder")
    d.add_argument("--config", default=None, help=f"{config} JSON (default: the built-in defaults)")
    d.add_argument("--steps", type=positive("--steps"), default=None, help=f"{steps} (override)")
    d.add_argument("--batch-size", type=positive("--batch-size"), default=None, help="override")
    d.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    add_device_arg(d)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="distil a model into a faster student")
    dsub = p.add_subparsers(dest="distill_command", metavar="METHOD", required=True)
    d = dsub.add_parser(
        "dimo", help="Di[M]O: a one-step student of a masked model",
        description="Distil a masked text-to-image model into a one-step generator by token-level "
                    "distribution matching against an auxiliary model trained online (Di[M]O). "
                    "Prompts are the captions of the config's data. " + RUN_FILES)
    add_run_args(d, "default: the config's, muse-128; an aMUSEd/Meissonic folder must be converted first "
                 "(fastmuse convert)", "DiMOConfig", "student updates")
    d.set_defaults(func=lambda a: run(a, "dimo_train", "DiMOConfig", "distill_dimo", ()))

    d = dsub.add_parser(
        "dmd", help="DMD / DMD2: a one- or few-step student of a diffusion model",
        description="Distil a latent diffusion model (e.g. dit-128) into a 1- to 4-step generator by "
                    "distribution matching: the teacher's guided denoiser against a fake denoiser trained "
                    "online on the student's samples (DMD2: several fake updates per student update, a "
                    "GAN head on the fake denoiser, backward simulation for multi-step students; DMD: "
                    "plus a regression loss on teacher ODE pairs). " + RUN_FILES)
    add_run_args(d, "a diffusion model; default: the config's, dit-128", "DMDConfig", "generator updates")
    d.add_argument("--method", choices=("dmd2", "dmd"), default=None, help="override the config's")
    d.add_argument("--student-steps", type=int, choices=(1, 2, 3, 4), default=None,
                   help="sampling steps of the student (override)")
    d.set_defaults(func=lambda a: run(a, "dmd_train", "DMDConfig", "distill_dmd",
                                      ("method", "student_steps")))

    d = dsub.add_parser(
        "scm", help="sCM: a one- or two-step consistency model from a diffusion model",
        description="Train a continuous-time consistency model (sCM) from a TrigFlow diffusion model "
                    "(e.g. dit-128), starting from its weights: --mode scd distils the teacher's guided ODE, "
                    "--mode sct trains from the data pairs alone. The loss's tangent comes from a "
                    "forward-mode JVP through the student; tangent normalisation, tangent warm-up and "
                    "adaptive weighting are config switches, and metrics.jsonl logs the loss, tangent and "
                    "gradient norms and skipped (non-finite) steps. " + RUN_FILES)
    add_run_args(d, "a diffusion model; default: the config's, dit-128", "SCMConfig", "updates")
    d.add_argument("--mode", choices=("scd", "sct"), default=None, help="override the config's (scd)")
    d.add_argument("--student-steps", type=int, choices=(1, 2), default=None,
                   help="the student's default sampling steps (override; it runs either)")
    d.set_defaults(func=lambda a: run(a, "scm_train", "SCMConfig", "distill_scm", ("mode", "student_steps")))
