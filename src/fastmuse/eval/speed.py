"""`fastmuse bench`: fast modes side by side in one run, with what each costs in quality.

Each row is one way to run the same weights, prompt, steps and guidance: fastmuse in each
fast mode (fast.py) and, for the aMUSEd-256 reference, diffusers' AmusedPipeline in fp32 and
under bf16 autocast (the peers). Per row: seconds per call (best of `repeats` after a warm-up;
a first call over SLOW_S seconds is kept as the measurement), images/s, the split into text
encoder / transformer / the rest (sampler, text projection) / VQ decoder from forward hooks,
MFU (FLOPs counted in fp32 by torch's FlopCounterMode, over the matmul peak of the row's
precision measured in the same run), peak working memory (RSS above the idle level on CPU,
max_memory_allocated on GPU), and the quality delta against the fp32 row of the same code on
the same seed: token agreement and decoded-image PSNR.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError
from ..fast import autocast
from ..int8 import quantize_int8
from ..pipeline import Pipeline

SLOW_S = 20.0  # a first call this slow is measured once: warm-up effects are lost in it


@dataclass
class Mode:
    """A fastmuse row: the Pipeline's precision / compile and sampler defaults it changes."""
    precision: str = "fp32"
    compile: bool = False
    sampler: dict = field(default_factory=dict)

    def pipeline(self, base: Pipeline) -> Pipeline:
        """`base`'s modules in this mode (an int8 pipeline quantizes a copy of the transformer)."""
        defaults = replace(base.defaults, **self.sampler)
        return Pipeline(base.transformer, base.tokenizer, base.text_encoder, defaults,
                        precision=self.precision, compile=self.compile)


MODES = {
    "fp32": Mode(),
    "fp32-compile": Mode(compile=True),
    "int8": Mode("int8"),
    "int8-cfg-half": Mode("int8", sampler={"guidance_interval": (0.0, 0.5)}),
    "bf16": Mode("bf16"),
}
DEFAULT_MODES = ["fp32", "int8", "int8-cfg-half", "bf16"]


def timed(fn: Callable[[], object], repeats: int) -> float:
    """Best wall time of `repeats` calls after a warm-up call (or the first call alone if slow)."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first > SLOW_S:
        return first
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


class Stopwatch:
    """Wall time spent inside given modules' forwards (forward hooks, removed on exit)."""

    def __init__(self, parts: dict[str, nn.Module]) -> None:
        self.parts, self.seconds = parts, dict.fromkeys(parts, 0.0)
        self._start: dict[str, float] = {}

    def __enter__(self) -> Stopwatch:
        self._hooks = [h for name, m in self.parts.items() for h in (
            m.register_forward_pre_hook(lambda *_, n=name: self._start.__setitem__(n, time.perf_counter())),
            m.register_forward_hook(lambda *_, n=name: self._stop(n)))]
        return self

    def _stop(self, name: str) -> None:
        self.seconds[name] += time.perf_counter() - self._start[name]

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()


class PeakMemory:
    """Peak working memory of a block, MiB: GPU max_memory_allocated, or RSS above the level
    at entry sampled every 2 ms from /proc (Linux), after handing freed heap back to the OS
    (glibc's malloc_trim) so that memory an earlier row freed is not reused unseen."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.mib = device, float("nan")

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        elif os.path.exists("/proc/self/statm"):
            gc.collect()
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)
            self._base = self._peak = self._rss()
            self._done = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._done.wait(0.002):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        elif hasattr(self, "_thread"):
            self._done.set()
            self._thread.join()
            self.mib = (max(self._peak, self._rss()) - self._base) / 2**20


def matmul_peak(precision: str, rows: int, dim: int, device: torch.device) -> float:
    """GFLOP/s of a [rows, dim] x [dim, 4 dim] Linear (the MLP shape) in that precision."""
    lin = nn.Linear(dim, 4 * dim, bias=False).to(device).eval()
    if precision == "int8":
        lin = quantize_int8(nn.Sequential(lin))
    x = torch.randn(rows, dim, device=device)

    def run() -> None:
        with torch.no_grad(), autocast(precision, device):
            lin(x)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return 2 * rows * dim * 4 * dim / timed(run, 5) / 1e9


def counted(fn: Callable[[], object]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def psnr(a: list, b: list) -> float:
    x, y = (np.stack([np.asarray(im, dtype=np.float64) for im in ims]) for ims in (a, b))
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@dataclass
class Row:
    name: str
    precision: str
    seconds: float
    images: int
    parts: dict[str, float]  # seconds in text / transformer / decoder within the best call
    flops: float
    memory_mib: float
    weights_mib: float
    tokens: torch.Tensor
    pil: list
    agreement: float = float("nan")
    psnr_db: float = float("nan")
    mfu: float = float("nan")
    quality: dict = field(default_factory=dict)  # --quality: the evaluation suite's measures

    def as_dict(self, steps: int) -> dict:
        net = self.parts.get("transformer", float("nan"))
        other = self.seconds - sum(self.parts.values())
        return {"mode": self.name, "precision": self.precision, "seconds": round(self.seconds, 3),
                "seconds_per_image": round(self.seconds / self.images, 3),
                "images_per_second": round(self.images / self.seconds, 3),
                "text_s": round(self.parts.get("text", float("nan")), 3),
                "transformer_per_step_s": round(net / steps, 4), "other_s": round(other, 3),
                "vq_decode_s": round(self.parts.get("decoder", float("nan")), 3),
                "token_agreement": round(self.agreement, 4), "psnr_db": round(self.psnr_db, 2),
                "gflop": float(f"{self.flops / 1e9:.4g}"), "mfu": round(self.mfu, 3),
                "peak_working_mib": round(self.memory_mib, 1), "weights_mib": round(self.weights_mib, 2),
                **self.quality}


def weights_mib(*modules: nn.Module) -> float:
    """Bytes of the modules' weights (int8-packed Linear weights count 1 byte each)."""
    return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values()
               if isinstance(t, torch.Tensor)) / 2**20


def measure(name: str, precision: str, call: Callable[[], tuple[torch.Tensor, list]],
            parts: dict[str, nn.Module], device: torch.device, images: int, repeats: int, flops: float
            ) -> Row:
    """Time `call` (-> tokens, images), keeping the split into `parts` and the memory of its best run."""
    best: dict = {}

    def run() -> None:
        with Stopwatch(parts) as watch, PeakMemory(device) as mem:
            t0 = time.perf_counter()
            tokens, pil = call()
            took = time.perf_counter() - t0
        if took < best.get("seconds", float("inf")):
            best.update(seconds=took, parts=dict(watch.seconds), tokens=tokens, pil=pil, mib=mem.mib)

    timed(run, repeats)
    return Row(name, precision, best["seconds"], images, best["parts"], flops, best["mib"],
               weights_mib(*parts.values()), best["tokens"], best["pil"])


def fastmuse_rows(base: Pipeline, modes: list[str], prompt: str, n: int, steps: int, guidance: float,
                  repeats: int, progress: Callable[[str], None] = print) -> list[Row]:
    """One row per mode on `base`'s fp32 modules (an int8 row quantizes a copy)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ConfigError(f"mode {unknown[0]!r} unknown; accepted: {', '.join(MODES)}")
    rows = []
    for name in modes:
        mode = MODES[name]
        progress(f"fastmuse {name} ...")
        pipe = mode.pipeline(base)
        kw = {"n": n, "steps": steps, "guidance": guidance}
        flops = fastmuse_flops(Mode(sampler=mode.sampler).pipeline(base), prompt, **kw)  # counted in fp32
        parts = {"text": pipe.text_encoder.model, "transformer": pipe.transformer,
                 "decoder": pipe.tokenizer.decoder}

        def call(pipe: Pipeline = pipe, kw: dict = kw) -> tuple[torch.Tensor, list]:
            tokens = pipe.generate_tokens(prompt, seed=0, **kw)
            return tokens, pipe.decode(tokens)

        rows.append(measure(f"fastmuse {name}", mode.precision, call, parts, pipe.device, n, repeats, flops))
        progress(f"  {rows[-1].seconds:.2f} s per call")
        if mode.compile:  # compile replaced forward on the shared module: put the eager one back
            del pipe.transformer.forward
    return rows


def fastmuse_flops(pipe: Pipeline, prompt: str, n: int, steps: int, guidance: float) -> float:
    """FLOPs of one call of an fp32 pipeline: text + one forward per network evaluation + VQ decode."""
    with torch.no_grad():
        text = counted(lambda: pipe.text_encoder.encode([prompt]))
        cond = pipe.transformer.prepare_text(pipe.text_encoder.encode([prompt]))
        g = pipe.transformer.config.grid
        forward = counted(lambda: pipe.transformer(torch.full((1, g, g), pipe.transformer.mask_id), cond))
        decode = counted(lambda: pipe.tokenizer.decode(torch.zeros(1, g, g, dtype=torch.long)))
    # the "" context is computed once per pipeline, so a call encodes only its prompt
    return text + n * (forward * pipe.network_evaluations(steps, guidance) + decode)


def suite_quality(pipe: Pipeline, seeds: int, steps: int, guidance: float) -> dict:
    """Shapes accuracy and emoji FD (the evaluation suite, eval/suite.py) of a pipeline."""
    from .suite import EvalSettings, eval_emoji, eval_shapes

    s = EvalSettings(seeds=seeds, steps=steps, guidance=guidance)
    shapes, emoji = eval_shapes(pipe, s)[0], eval_emoji(pipe, s, ("val",))[0]
    return {"shapes_overall": round(shapes["accuracy"]["overall"], 4), "fd": round(emoji["fid"], 2),
            "kid": round(emoji["kid"], 5)}


def compare(rows: list[Row], reference: Row) -> None:
    """Token agreement and image PSNR of each row against `reference` (same seed)."""
    for r in rows:
        r.agreement = float((r.tokens == reference.tokens).float().mean())
        r.psnr_db = psnr(r.pil, reference.pil)


def set_mfu(rows: list[Row], peaks: dict[str, float]) -> None:
    for r in rows:
        r.mfu = r.flops / r.seconds / 1e9 / peaks[r.precision]


def table(rows: list[dict], baseline: str) -> str:
    """Markdown: the side-by-side rows, speed-ups against `baseline` (a row's mode)."""
    base = next(r for r in rows if r["mode"] == baseline)["seconds"]
    head = ("| mode | s/img | img/s | vs " + baseline + " | token agreement | PSNR dB | MFU | weights MiB "
            "| peak working MiB |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['mode']} | {r['seconds_per_image']:.2f} | {r['images_per_second']:.2f} | "
             f"{base / r['seconds']:.2f}x | {r['token_agreement']:.3f} | {r['psnr_db']:.1f} | "
             f"{r['mfu']:.2f} | {r['weights_mib']:.0f} | {r['peak_working_mib']:.0f} |" for r in rows]
    if any("fd" in r for r in rows):  # --quality
        head = head.replace(" |\n|", " | shapes overall | emoji FD |\n|---|---|", 1)
        lines = [line + (f" {r['shapes_overall']:.3f} | {r['fd']:.1f} |" if "fd" in r else " | |")
                 for line, r in zip(lines, rows, strict=True)]
    return head + "\n".join(lines) + "\n"


def parts_table(rows: list[dict]) -> str:
    head = ("| mode | text encoder s | transformer s/step | sampler + rest s | VQ decode s | total s |\n"
            "|---|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['mode']} | {r['text_s']:.3f} | {r['transformer_per_step_s']:.3f} | "
                            f"{r['other_s']:.3f} | {r['vq_decode_s']:.3f} | {r['seconds']:.2f} |"
                            for r in rows) + "\n"
