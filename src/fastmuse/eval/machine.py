"""What a result was measured on: CPU model, the SIMD flags that change speed ratios, threads."""

from __future__ import annotations

import platform

import torch

SPEED_FLAGS = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni"}


def _cpuinfo(key: str) -> str:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key)), "")


def cpu_flags() -> list[str]:
    return sorted(f for f in _cpuinfo("flags").split() if f in SPEED_FLAGS)


def describe_machine() -> str:
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{name} ({', '.join(cpu_flags()) or 'no AVX2'}), {torch.get_num_threads()} threads{gpu}"
