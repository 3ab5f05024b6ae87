"""`precision=`: the arithmetic the frozen network runs in.

`"float32"` runs the model as written. `"bf16"` runs it under `torch.autocast(device, dtype=torch.bfloat16)` with
channels-last inputs: convolutions and matrix products in bfloat16 on the CPU's matrix units (AVX-512 BF16, AMX) or
the GPU's tensor cores, everything the caller owns (parameterizations, optimizer state, statistics) in float32.
`"auto"` picks bf16 where it is faster, in two stages:

1. the device (`resolve_precision`): on CUDA when the device supports bfloat16, on the CPU when a short measured
   check (a small convolution forward and backward in both precisions, run once per process and device type) finds
   bfloat16 at least `AUTO_MIN_SPEEDUP` times faster; elsewhere float32;
2. the network (`choose_precision`): where the device qualifies and a pass has at least `AUTO_MIN_WORK`
   multiply-accumulates (counted in the probe pass), a few timed forward and backward passes of the actual work (the frozen working copy, the caller's batch and input size) in both precisions, cached per working
   copy and workload; bf16 only if it is at least `AUTO_MIN_NETWORK_SPEEDUP` times faster. Tiny networks (autocast
   costs more than it saves) and depthwise-heavy ones like MobileNetV2 (slower bf16 kernels on our CPUs) stay
   float32; GoogLeNet- or ResNet-like trunks at real batch sizes go bf16.

What ran is the resolved value every recipe records.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable, Hashable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import OptionError
from .switch import enabled

__all__ = ["PRECISIONS", "Precision", "Resolved", "check_precision", "resolve_precision", "choose_precision", "network_precision",
           "bf16_speedup", "AUTO_MIN_SPEEDUP", "AUTO_MIN_NETWORK_SPEEDUP", "AUTO_MIN_WORK"]

Precision = Literal["auto", "float32", "bf16"]
Resolved = Literal["float32", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "float32", "bf16")
AUTO_MIN_SPEEDUP = 1.3
AUTO_MIN_NETWORK_SPEEDUP = 1.15
AUTO_MIN_WORK = 50_000_000  # multiply-accumulates per pass below which "auto" does not even measure: float32

_MEASURED: dict[str, float] = {}
# working copy -> {workload key: what "auto" chose for it}
_CHOSEN: "weakref.WeakKeyDictionary[nn.Module, dict[Hashable, Resolved]]" = weakref.WeakKeyDictionary()


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


def check_precision(precision: str) -> None:
    """Raise `OptionError` naming the choices unless `precision` is one of `PRECISIONS`."""
    if precision not in PRECISIONS:
        raise OptionError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")


def resolve_precision(precision: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
                      ) -> Resolved:
    """`"auto"` / `"float32"` / `"bf16"` -> what will run on `device` for a model of `dtype`.

    Explicit `"bf16"` is honoured (also where it is slower); `"auto"` means bf16 only for float32 models on a device
    where it is measurably faster, and float32 inside `accel.plain()`. Anything else raises `OptionError`.
    """
    check_precision(precision)
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


def choose_precision(precision: str, net: nn.Module, trial: Callable[[Resolved], object], key: Hashable,
                     device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                     work: int | None = None) -> Resolved:
    """What runs for this workload: explicit choices as `resolve_precision`; `"auto"` where the device qualifies
    and the pass has at least `AUTO_MIN_WORK` multiply-accumulates (`work`, when known) measures `trial(precision)`
    (one forward and backward pass of the real work on `net`, a frozen working copy) in both precisions,
    interleaved, after a warm-up, and keeps bf16 only when it is at least `AUTO_MIN_NETWORK_SPEEDUP` times faster.
    The choice is cached per `net` and `key` (e.g. input shape and layers)."""
    check_precision(precision)
    if precision == "auto" and work is not None and work < AUTO_MIN_WORK:
        return "float32"  # too little arithmetic for bf16 to pay: not even the device is measured
    first = resolve_precision(precision, device, dtype)
    if precision != "auto" or first == "float32":
        return first
    known = _CHOSEN.setdefault(net, {})
    if key not in known:
        times: dict[Resolved, list[float]] = {"float32": [], "bf16": []}
        for run in range(3):  # the first round warms up (oneDNN primitives, allocations)
            for choice in ("float32", "bf16"):
                start = time.perf_counter()
                trial(choice)
                if run:
                    times[choice].append(time.perf_counter() - start)
        speedup = min(times["float32"]) / max(min(times["bf16"]), 1e-9)
        known[key] = "bf16" if speedup >= AUTO_MIN_NETWORK_SPEEDUP else "float32"
    return known[key]
