"""`fastmuse bench`: every fast mode side by side in one run (eval/speed.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import DEFAULT_MODEL, add_device_arg, positive

REFERENCES = ("amused-256",)


def cmd_bench(a: argparse.Namespace) -> None:
    from ..errors import ConfigError
    from ..eval.machine import describe_machine
    from ..eval.speed import (
        DEFAULT_MODES,
        MODES,
        Row,
        compare,
        fastmuse_flops,
        fastmuse_rows,
        matmul_peak,
        set_mfu,
        suite_quality,
    )
    from ..fast import resolve_device

    device = resolve_device(a.device)
    if a.cold:
        if device.type != "cpu":
            raise ConfigError("--cold times CPU processes (one image per fresh process); with --device "
                              f"{a.device}, run the warm benchmark (without --cold)")
        return cold(a)
    if a.modes is None:  # int8 is CPU only
        a.modes = DEFAULT_MODES if device.type == "cpu" else ["fp32", "bf16"]
    if a.reference and a.quality:
        raise ConfigError("--quality runs the evaluation suite on a trained model; --reference has random "
                          "weights (its quality delta is the token agreement)")
    machine = describe_machine()
    print(f"machine: {machine}", flush=True)
    progress = lambda text: print(text, flush=True)  # noqa: E731
    base, ref, prompt, n, steps, guidance = subject(a, device, progress)
    cfg = base.transformer.config
    width = getattr(cfg, "hidden_size", getattr(cfg, "dim", 0))
    rows_in_batch = (2 if guidance > 0 else 1) * n * cfg.grid ** 2
    used = {MODES[m].precision for m in a.modes} | set(a.peers if a.reference else []) | {"fp32"}
    peaks = {p: matmul_peak(p, rows_in_batch, width, base.device) for p in sorted(used)}
    progress("matmul peak at the MLP shape, GFLOP/s: " + ", ".join(f"{p} {v:.0f}" for p, v in peaks.items()))

    ours = fastmuse_rows(base, a.modes, prompt, n, steps, guidance, a.repeats, progress)
    rows: list[Row] = []
    if a.reference and a.peers:
        from ..eval.speed_reference import diffusers_rows

        flops = fastmuse_flops(base, prompt, n, steps, guidance)
        peers = diffusers_rows(ref, a.peers, steps, guidance + 1, a.repeats, flops, device, progress)
        compare(peers, peers[0])
        rows += peers
    compare(ours, ours[0])
    if a.quality:
        for name, row in zip(a.modes, ours, strict=True):
            progress(f"fastmuse {name}: evaluation suite ...")
            row.quality = suite_quality(MODES[name].pipeline(base), a.seeds, steps, guidance)
    rows += ours
    set_mfu(rows, peaks)
    what = a.reference or a.model
    report(a, rows, what, machine, base, prompt, n, steps, guidance, peaks)


def subject(a: argparse.Namespace, device, progress):
    """What is timed: aMUSEd-256 with random weights built twice (diffusers' `ref` and its
    fastmuse twin) with --reference, else the --model pipeline; with the prompt, images,
    steps and guidance of the run (fastmuse's scale: diffusers' minus 1)."""
    from ..errors import ConfigError
    from ..pipeline import Pipeline

    if a.reference:
        from ..eval.speed_reference import PROMPT, amused_256, fastmuse_twin

        progress("building aMUSEd-256 with random weights in diffusers and fastmuse ...")
        ref = amused_256().to(device)
        steps, guidance = a.steps or 12, 10.0 if a.guidance is None else a.guidance  # diffusers' scale
        base = fastmuse_twin(ref, steps, guidance, device)
        a.peers = ["fp32", "bf16"] if a.peers is None else a.peers
        return base, ref, PROMPT, 1, steps, guidance - 1
    base = Pipeline.from_pretrained(a.model, device=device)
    if base.family.name not in ("maskgit", "one_step"):
        raise ConfigError(f"--model {a.model}: fastmuse bench times masked-token models (MaskGIT or "
                          "one-step); for diffusion and autoregressive models use "
                          "`fastmuse eval --suite speed`")
    guidance = base.defaults.guidance if a.guidance is None else a.guidance
    return base, None, a.prompt, a.n, a.steps or base.defaults.steps, guidance


def report(a: argparse.Namespace, rows, what: str, machine: str, base, prompt: str, n: int, steps: int,
           guidance: float, peaks: dict) -> None:
    """The speed table and where the time goes, printed; with --json also written as JSON."""
    from ..eval.speed import parts_table, table
    from ..fsutil import atomic_write_bytes

    as_dicts = [r.as_dict(steps) for r in rows]
    header = (f"{what}: {n} image(s) of {base.transformer.config.grid * base.tokenizer.downsample} px, "
              f"{steps} steps, guidance {guidance:g}{' (diffusers: 1 more)' if a.reference else ''}, "
              f"{machine}. Quality: each row against the first row of the same code, same seed.")
    md = (f"{header}\n\n{table(as_dicts, rows[0].name)}\nWhere the time goes (the best call of each row):\n\n"
          f"{parts_table(as_dicts)}")
    print("\n" + md, end="")
    if a.json:
        result = {"model": what, "machine": machine, "steps": steps, "guidance": guidance, "images": n,
                  "prompt": prompt, "matmul_peak_gflops": peaks, "rows": as_dicts}
        atomic_write_bytes(Path(a.json), (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {a.json}")


def cold(a: argparse.Namespace) -> None:
    """--cold: one image per fresh process, diffusers beside fastmuse (eval/cold_start.py)."""
    from ..eval.cold_start import cold_rows, cold_table
    from ..eval.machine import describe_machine
    from ..fast import cpu_precision
    from ..fsutil import atomic_write_bytes

    machine = describe_machine()
    print(f"machine: {machine}", flush=True)
    peers = a.peers if a.peers is not None else ["fp32"] + (["bf16"] if cpu_precision() == "bf16" else [])
    steps, guidance = a.steps or 12, 9.0 if a.guidance is None else a.guidance
    rows = cold_rows(Path(a.work), steps, guidance, peers, a.repeats, lambda text: print(text, flush=True))
    print(f"\naMUSEd-256 (random weights), one image of 256 px, {steps} steps, guidance {guidance:g} "
          f"(diffusers: {guidance + 1:g}), batch 1, one process per row, {machine}.\n", flush=True)
    print(cold_table(rows), end="")
    if a.json:
        result = {"machine": machine, "steps": steps, "guidance": guidance, "rows": rows}
        atomic_write_bytes(Path(a.json), (json.dumps(result, indent=2) + "\n").encode())
        print(f"wrote {a.json}")


def register(sub: argparse._SubParsersAction) -> None:
    from ..eval.speed import DEFAULT_MODES, MODES

    p = sub.add_parser("bench", help="inference speed of every fast mode, side by side",
                       description="Time text-to-image in each fast mode on the same weights, prompt, steps "
                                   "and guidance, in one run: seconds per image, images/s, where the time "
                                   "goes (text encoder, transformer per step, sampler, VQ decode), MFU "
                                   "against the matmul peak of each precision measured in the same run, "
                                   "peak working memory, and the quality cost (token agreement and image "
                                   "PSNR against the fp32 row, same seed). --reference amused-256 runs the "
                                   "public aMUSEd-256 architecture with random weights and adds diffusers' "
                                   "AmusedPipeline (fp32 and bf16 autocast) as peers.")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"bundled name or folder (default {DEFAULT_MODEL})")
    p.add_argument("--reference", choices=REFERENCES, default=None,
                   help="instead of --model: the public architecture with random weights, with diffusers' "
                        "pipeline beside ours (needs diffusers; builds 873M parameters, ~1 min). On CPUs "
                        "without AVX-512-BF16 the bf16 rows are very slow (diffusers' took 32 min on a "
                        "2-core AVX2 EPYC): --peers fp32 --modes fp32 int8 int8-cfg-half skips them")
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=None,
                   help=f"fastmuse rows (default on a CPU: {' '.join(DEFAULT_MODES)}; on a GPU: fp32 bf16); "
                        "the first is the quality reference")
    p.add_argument("--peers", nargs="*", choices=["fp32", "bf16"], default=None,
                   help="--reference / --cold: diffusers rows (default: fp32 bf16 with --reference; with "
                        "--cold fp32, and bf16 where --precision auto picks bf16 on this CPU)")
    p.add_argument("--cold", action="store_true",
                   help="cold start instead: aMUSEd-256 with random weights, one image per fresh process "
                        "(import, load, first image, whole process) for diffusers' AmusedPipeline and "
                        "fastmuse (default precision, int8 stored pre-quantized, int8 quantized at load) "
                        "and the `fastmuse generate` command; about 6 min on 2 CPU cores, plus ~2 min and "
                        "~8 GB of disk the first time (the folders in --work)")
    p.add_argument("--work", default="outputs/cold-start",
                   help="--cold: where the model folders are written once and reused "
                        "(default outputs/cold-start)")
    p.add_argument("--prompt", default="red heart", help="default 'red heart' (reference: a fixed prompt)")
    p.add_argument("--n", type=positive("--n"), default=4, help="images per call (default 4; reference: 1)")
    p.add_argument("--steps", type=positive("--steps"), default=None,
                   help="default: the model's (reference: 12)")
    p.add_argument("--guidance", type=float, default=None,
                   help="default: the model's (reference: 10 on diffusers' scale, 9 on ours)")
    p.add_argument("--repeats", type=positive("--repeats"), default=2,
                   help="timed calls per row after a warm-up, best kept (default 2; a first call over 20 s "
                        "is measured once); --cold: rounds of fresh processes, the fastest kept")
    p.add_argument("--quality", action="store_true",
                   help="also run the evaluation suite per fastmuse row: shapes accuracy and emoji FD "
                        "(bundled-scale models; minutes per row)")
    p.add_argument("--seeds", type=positive("--seeds"), default=2,
                   help="--quality: images per evaluation prompt (default 2)")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    add_device_arg(p)
    p.set_defaults(func=cmd_bench)
