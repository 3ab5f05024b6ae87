"""Max-pooling of NCHW maps on the CPU, run in channels-last: the same values, up to 10x faster.

PyTorch's CPU max-pool kernel over a contiguous NCHW map walks one channel plane at a time; over a channels-last map
it is vectorized across channels. Measured on one core (AMD EPYC, torch 2.14, float32): a 2x2 pool of
(256, 32, 28, 28), fashion-cnn's first pool at a batch of 256, takes 36 ms NCHW and 4.9 ms channels-last; a 3x3
stride-1 pool of (8, 256, 16, 16) 12.7 ms and 0.9 ms. A plain float32 forward of fashion-cnn spends about half its
time in that one pool.

A maximum is exact in any memory layout, so `exact_pools(net)` changes no bit: for the block, every `nn.MaxPool2d`
of `net` (a working copy from `hooks.frozen`, never the user's model) that meets a 4-D NCHW CPU map gets it as a
channels-last copy (a forward pre-hook) and hands its output back as a contiguous NCHW tensor (a forward hook), as
the NCHW kernel returns it: values, layout, ties, NaN and signed zeros (`tests/test_accel_layout.py`). Its hooks are
registered before any capture's, so a capture of the pool itself sees the NCHW output. Pools called as functions
(`F.max_pool2d` in a `forward`) run as written. Nothing happens inside `accel.plain()`. The float32 dataset passes
use it (`analysis.scan`, the exact re-scores of bf16 scans, and `analysis.codes`), whose results must equal the
model's own bit for bit.

`strided_pools(net)` is for private copies whose bits need not be the model's (the bf16 pass of a dataset scan): it
replaces each non-overlapping `nn.MaxPool2d` (kernel = stride, no padding, dilation 1, floor mode) by
`StridedMaxPool2d`, the elementwise maximum of the window's strided views. The values are the max-pool's, NaN
propagated; only which of two equal zeros (+0, -0) comes out may differ. On one core (AMD EPYC, torch 2.14), a 2x2
pool of a channels-last bfloat16 (256, 32, 26, 26) map takes 2.4 ms as a max-pool and 1.0 ms as maxima; float32
3.0 and 1.7 ms.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .._working import copyable
from .switch import enabled

__all__ = ["exact_pools", "strided_pools", "StridedMaxPool2d"]


def _nchw(x: Any) -> bool:
    """A 4-D CPU floating-point map laid out NCHW, for which channels-last is a different layout."""
    return (isinstance(x, torch.Tensor) and x.ndim == 4 and x.device.type == "cpu" and x.is_floating_point()
            and x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last))


class _Pools:
    """The hooks of one `exact_pools` block: a map converted on the way in is converted back on the way out."""

    def __init__(self) -> None:
        self.converted: set[int] = set()

    def before(self, module: nn.Module, args: tuple) -> tuple | None:
        if args and _nchw(args[0]):
            self.converted.add(id(module))
            return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])
        return None

    def after(self, module: nn.Module, args: tuple, output: Any) -> Any:
        if id(module) in self.converted:
            self.converted.discard(id(module))
            return output.contiguous()
        return None


@contextlib.contextmanager
def exact_pools(net: nn.Module) -> Iterator[int]:
    """For the block, `net`'s `nn.MaxPool2d` modules run NCHW CPU maps in channels-last and return NCHW (see the
    module's text); yields how many pools were set up (0 inside `accel.plain()`). Enter it before any capture."""
    handles = []
    if enabled() and copyable(net):  # a TorchScript model runs itself (no working copy): left alone
        pools = _Pools()
        for module in net.modules():
            if isinstance(module, nn.MaxPool2d) and not module.return_indices:
                handles.append(module.register_forward_pre_hook(pools.before))
                handles.append(module.register_forward_hook(pools.after))
    try:
        yield len(handles) // 2
    finally:
        for handle in handles:
            handle.remove()


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


class StridedMaxPool2d(nn.Module):
    """A non-overlapping max-pool of (..., H, W) maps: the elementwise maximum of the kernel's kh x kw strided views,
    rows first (see the module's text). `kernel` (kh, kw), not (1, 1)."""

    def __init__(self, kernel: tuple[int, int]) -> None:
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel
        h, w = x.shape[-2] // kh * kh, x.shape[-1] // kw * kw
        rows = x[..., 0:h:kh, :w]
        for i in range(1, kh):
            rows = torch.maximum(rows, x[..., i:h:kh, :w])
        out = rows[..., 0::kw]
        for j in range(1, kw):
            out = torch.maximum(out, rows[..., j::kw])
        return out

    def extra_repr(self) -> str:
        return f"kernel={self.kernel}"


def strided_pools(net: nn.Module) -> int:
    """Replace, in place, every non-overlapping `nn.MaxPool2d` of `net` (a private copy) by a `StridedMaxPool2d`;
    returns how many. Not inside `accel.plain()`."""
    if not enabled():
        return 0
    found = []
    for path, module in net.named_modules():
        if type(module) is not nn.MaxPool2d or module.return_indices or module.ceil_mode:
            continue
        kernel, stride = _pair(module.kernel_size), _pair(module.stride or module.kernel_size)
        if kernel == stride and _pair(module.padding) == (0, 0) and _pair(module.dilation) == (1, 1) \
                and kernel != (1, 1):
            found.append((path, kernel))
    for path, kernel in found:
        net.set_submodule(path, StridedMaxPool2d(kernel))
    return len(found)
