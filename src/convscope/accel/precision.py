"""`precision=`: the arithmetic the frozen network runs in.

`"float32"` runs the model as written. `"bf16"` runs it under `torch.autocast(device, dtype=torch.bfloat16)` with
channels-last inputs: convolutions and matrix products in bfloat16 on the CPU's matrix units (AVX-512 BF16, AMX) or
the GPU's tensor cores, everything the caller owns (parameterizations, optimizer state, statistics) in float32.
`"auto"` picks bf16 where it is faster on the device: on CUDA when the device supports bfloat16, on the CPU when a
short measured check (a small convolution forward and backward in both precisions, run once per process and
device type) finds bfloat16 at least `AUTO_MIN_SPEEDUP` times faster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F

from ..errors import OptionError
from .switch import enabled

__all__ = ["PRECISIONS", "Precision", "Resolved", "resolve_precision", "network_precision", "bf16_speedup",
           "AUTO_MIN_SPEEDUP"]

Precision = Literal["auto", "float32", "bf16"]
Resolved = Literal["float32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bf16")
AUTO_MIN_SPEEDUP = 1.3

_MEASURED: dict[str, float] = {}


def bf16_speedup(device: torch.device | str = "cpu") -> float:
    """How many times faster a small frozen convolution (forward + input gradient, channels-last) runs under bf16
    autocast than in float32 on `device` (measured once per process and device type; 0.0 where bf16 cannot run)."""
    device = torch.device(device)
    key = device.type
    if key in _MEASURED:
        return _MEASURED[key]
    if key == "cuda":
        speedup = 2.0 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 0.0
    elif key == "cpu":
        speedup = _measure_cpu()
    else:
        speedup = 0.0
    _MEASURED[key] = speedup
    return speedup


def _measure_cpu() -> float:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 28, 28, generator=generator).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)

    def step(bf16: bool) -> None:
        inp = x.detach().requires_grad_(True)
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            out = F.conv2d(F.conv2d(inp, w, padding=1).relu(), w, padding=1)
        torch.autograd.grad(out.float().sum(), inp)

    def best(bf16: bool) -> float:
        try:
            step(bf16)  # warm-up: oneDNN primitive creation
        except RuntimeError:
            return float("inf")
        times = []
        for _ in range(3):
            start = time.perf_counter()
            step(bf16)
            times.append(time.perf_counter() - start)
        return min(times)

    plain, low = best(False), best(True)
    return 0.0 if low == float("inf") else plain / low


def resolve_precision(precision: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                      ) -> Resolved:
    """`"auto"` / `"float32"` / `"bf16"` -> what will run on `device` for a model of `dtype`.

    Explicit `"bf16"` is honoured (also where it is slower); `"auto"` means bf16 only for float32 models on a device
    where it is measurably faster, and float32 inside `accel.plain()`. Anything else raises `OptionError`.
    """
    if precision not in PRECISIONS:
        raise OptionError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if dtype != torch.float32 or not enabled():
            return "float32"
        return "bf16" if bf16_speedup(device) >= AUTO_MIN_SPEEDUP else "float32"
    return precision  # type: ignore[return-value]


@contextlib.contextmanager
def network_precision(precision: Resolved, device: torch.device | str) -> Iterator[None]:
    """Run the block's network calls in `precision` (a resolved value): bf16 autocast, or nothing for float32.
    Outputs of autocast regions may be bfloat16; callers cast what they keep back to float32."""
    device = torch.device(device)
    if precision == "float32":
        yield
        return
    with torch.autocast(device.type, dtype=torch.bfloat16):
        yield
