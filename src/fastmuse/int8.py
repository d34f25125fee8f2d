"""int8 transformers: quantized at load (`precision="int8"`), or stored pre-quantized.

    quantize_int8(model)     every nn.Linear -> PyTorch's dynamic int8 Linear (per-channel
                             symmetric int8 weights, activations quantized per call)
    int8_state(model)        its tensors, safetensors-ready: each Linear as `weight` (int8),
                             `weight_scale` (fp64), `weight_zero_point` and `bias`
    load_int8(model, state)  the reverse, into a model built under hub.no_init(): the same
                             modules quantize_int8 makes, bit for bit, without the pass that
                             measures 603M weights (12 s of a 13 s aMUSEd-256 load on 2 cores)

A folder written by `fastmuse convert SRC OUT --precision int8` holds `quantization.json`
beside the usual files; it loads only as int8.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

from .errors import CheckpointError

QUANT_FILE = "quantization.json"
SCHEME = "dynamic int8: nn.Linear weights qint8 per output channel (symmetric), activations per call"


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.Linear dynamically quantized to int8 (per-channel weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    with warnings.catch_warnings():  # torch marks its quantized tensors deprecated (no CPU successor yet)
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8).eval()


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, Int8Linear) for m in model.modules())


def quant_file() -> bytes:
    return (json.dumps({"precision": "int8", "scheme": SCHEME, "torch": torch.__version__}, indent=2)
            + "\n").encode()


def is_int8_folder(folder: str | Path) -> bool:
    return (Path(folder) / QUANT_FILE).is_file()


def int8_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A quantize_int8 model's tensors as plain int8 / float tensors (the packed kernels' format
    is PyTorch's business; this one is stable)."""
    linears = {name: m for name, m in model.named_modules() if isinstance(m, Int8Linear)}
    state = {k: v for k, v in model.state_dict().items()
             if isinstance(v, torch.Tensor) and k.rpartition(".")[0] not in linears}
    for name, m in linears.items():
        w, b = m._packed_params._weight_bias()
        state |= {f"{name}.weight": w.int_repr(), f"{name}.weight_scale": w.q_per_channel_scales(),
                  f"{name}.weight_zero_point": w.q_per_channel_zero_points()}
        if b is not None:
            state[f"{name}.bias"] = b.detach()
    return state


def load_int8(model: nn.Module, state: Mapping[str, torch.Tensor], where: str) -> nn.Module:
    """`model` (built under hub.no_init()) with `state` (from int8_state) in it: the Linears named
    there become int8 Linears, everything else is assigned. CheckpointError on any mismatch."""
    from .hub import check_state

    names = sorted(k.removesuffix(".weight_scale") for k in state if k.endswith(".weight_scale"))
    modules = dict(model.named_modules())
    not_linear = [n for n in names if not isinstance(modules.get(n), nn.Linear)]
    if not_linear:
        raise CheckpointError(f"{where}: int8 weights for {not_linear[0]!r}, which the config does not "
                              "make as a Linear layer")
    own = model.state_dict()
    packed = {f"{n}.{s}" for n in names for s in ("weight", "weight_scale", "weight_zero_point", "bias")}
    check_state({k: v for k, v in own.items() if k not in packed},
                {k: v for k, v in state.items() if k not in packed}, where)
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items() if k not in packed},
                          strict=False, assign=True)
    def int8_linear(n: str) -> Int8Linear:
        lin: nn.Linear = modules[n]
        w = state[f"{n}.weight"]
        if (f"{n}.bias" in state) != (lin.bias is not None):
            what = "missing" if lin.bias is not None else "unexpected"
            raise CheckpointError(f"{where}: {n}.bias is {what}")
        if w.dtype != torch.int8 or w.shape != lin.weight.shape:
            raise CheckpointError(f"{where}: int8 weight {n}.weight is {w.dtype} {tuple(w.shape)}, the "
                                  f"config gives int8 {tuple(lin.weight.shape)}")
        q = Int8Linear(1, 1, dtype=torch.qint8)  # built 1x1: its constructor packs a zero weight
        q.in_features, q.out_features = lin.in_features, lin.out_features  # of the full size otherwise
        qw = torch._make_per_channel_quantized_tensor(w, state[f"{n}.weight_scale"].double(),
                                                      state[f"{n}.weight_zero_point"].long(), 0)
        q.set_weight_bias(qw, state.get(f"{n}.bias"))  # the kernel's packing: most of the load time
        return q

    with warnings.catch_warnings(), ThreadPoolExecutor(torch.get_num_threads()) as pool:
        warnings.simplefilter("ignore")  # torch marks its quantized tensors deprecated
        for n, q in zip(names, pool.map(int8_linear, names), strict=True):  # packing releases the GIL
            parent, _, child = n.rpartition(".")
            setattr(modules[parent] if parent else model, child, q)
    return model.eval()
