"""`fastmuse bench --cold`: one image from a fresh process, as a user runs the CLI once.

Each row is a new Python process that imports, loads the aMUSEd-256 architecture (random
weights, written once into a work folder in diffusers' and in fastmuse's formats) and makes
one image at batch 1; the parent times the whole process and the child each phase:

    import  torch and the pipeline package (diffusers: with transformers' CLIP text model, which
            it needs; fastmuse reads the CLIP folder with text/native.py instead)
    load    from_pretrained (fastmuse: manifest check, no random init, weights assigned)
    image   the first image, decoded, PNG written

diffusers' AmusedPipeline runs fp32 (and bf16 autocast where `--precision auto` picks bf16 on
this CPU: elsewhere its bf16 takes half an hour); fastmuse runs the calls `fastmuse generate`
makes with the default precision (auto), int8 from the folder `fastmuse convert --precision
int8` writes, and int8 quantized at load (what that folder saves); the last row is the
`fastmuse generate` command itself, timed whole. Each row keeps its fastest of `--repeats`
rounds (this machine's noise: the same image took 46 s and 52 s in two runs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import ConfigError
from ..fsutil import atomic_dir

PROMPT = "a photo of a cat"
PHASES = ("import", "load", "image")

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
{imports}
t1 = time.perf_counter()
folder, precision, steps, guidance, out = sys.argv[1:6]
{load}
t2 = time.perf_counter()
{image}
image.save(out)
t3 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "load": t2 - t1, "image": t3 - t2}}))
"""
DIFFUSERS = CHILD.format(
    imports="import transformers.models.clip.modeling_clip\nfrom diffusers import AmusedPipeline",
    load="pipe = AmusedPipeline.from_pretrained(folder)\npipe.set_progress_bar_config(disable=True)",
    image=("with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16'):\n"
           f"    image = pipe({PROMPT!r}, num_inference_steps=int(steps),\n"
           "                 guidance_scale=float(guidance) + 1,  # diffusers' scale: one more than ours\n"
           "                 generator=torch.Generator().manual_seed(0)).images[0]"))
FASTMUSE = CHILD.format(
    imports="from fastmuse.pipeline import Pipeline",
    load="pipe = Pipeline.from_pretrained(folder, precision=precision)",
    image=f"image = pipe({PROMPT!r}, steps=int(steps), guidance=float(guidance), seed=0)[0]")


def prepare(work: Path, progress: Callable[[str], None]) -> dict[str, Path]:
    """The three folders (built once, reused by later runs): diffusers, fastmuse fp32, int8."""
    from ..convert import convert_public
    from .speed_reference import amused_256

    folders = {"diffusers": work / "diffusers", "fp32": work / "fastmuse", "int8": work / "fastmuse-int8"}
    if not (folders["diffusers"] / "model_index.json").is_file():
        progress(f"writing aMUSEd-256 with random weights to {folders['diffusers']} (once, ~1 min) ...")
        with atomic_dir(folders["diffusers"]) as tmp:
            amused_256().save_pretrained(tmp, safe_serialization=True)
    if not folders["fp32"].is_dir():
        progress(f"fastmuse convert {folders['diffusers']} {folders['fp32']} ...")
        convert_public(folders["diffusers"], folders["fp32"])
    if not folders["int8"].is_dir():
        progress(f"fastmuse convert {folders['fp32']} {folders['int8']} --precision int8 ...")
        convert_public(folders["fp32"], folders["int8"], "int8")
    return folders


def timed(cmd: list[str]) -> tuple[float, str]:
    """Wall seconds of a child process and its stdout; its stderr in the error if it fails."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise ConfigError(f"{' '.join(cmd[:3])} ... failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def cold_rows(work: Path, steps: int, guidance: float, peers: list[str], repeats: int,
              progress: Callable[[str], None]) -> list[dict]:
    """One row per process: name, precision, import / load / image seconds, whole process; each
    the fastest of `repeats` rounds (the rows take turns, so a slow spell hits them alike)."""
    work.mkdir(parents=True, exist_ok=True)
    folders = prepare(work, progress)
    png = str(work / "image.png")
    child = [str(steps), str(guidance), png]
    runs = [(f"diffusers AmusedPipeline {p}", p, ["-c", DIFFUSERS, str(folders["diffusers"]), p, *child])
            for p in peers]
    runs += [(name, p, ["-c", FASTMUSE, str(folders[kind]), p, *child]) for name, kind, p in (
        ("fastmuse auto (the default)", "fp32", "auto"),
        ("fastmuse int8, stored pre-quantized", "int8", "int8"),
        ("fastmuse int8, quantized at load", "fp32", "int8"))]
    runs.append(("`fastmuse generate` (auto)", "auto",
                 ["-m", "fastmuse", "generate", PROMPT, "--model", str(folders["fp32"]), "--n", "1",
                  "--steps", str(steps), "--guidance", str(guidance), "--seed", "0", "-o", png]))
    best: dict[str, dict] = {}
    for round_ in range(repeats):
        for name, precision, args in runs:
            progress(f"{name} (round {round_ + 1} of {repeats}) ...")
            seconds, out = timed([sys.executable, *args])
            row = {"row": name, "precision": precision, "process": seconds}
            if args[0] == "-c":  # the children print their phases; the CLI is timed whole
                row |= json.loads(out.strip().splitlines()[-1])
            if name not in best or seconds < best[name]["process"]:
                best[name] = row
    return list(best.values())


def cold_table(rows: list[dict]) -> str:
    ref = rows[0]["process"]
    lines = ["| process | import s | load s | first image s | whole process s | vs first row |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        phases = " | ".join(f"{r[p]:.2f}" if p in r else "" for p in PHASES)
        lines.append(f"| {r['row']} | {phases} | {r['process']:.1f} | {ref / r['process']:.2f}x |")
    return "\n".join(lines) + "\n"
