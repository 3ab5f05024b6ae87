"""Max-pools for the render loop: buffers reused from step to step, and a rectifier's backward done on the pool.

Two savings, both exact:

- Every `nn.MaxPool2d` keeps its index map (int64, twice the size of its output) and its input gradient in memory
  it reuses (`_Scratch`). Fresh tensors of that size are handed back to the OS by glibc's malloc and faulted in
  again page by page at every step; on a GoogLeNet at batch 16 the pools' fresh memory was about half of all page
  faults of a render step.
- `max_pool(relu(y))` equals `relu(max_pool(y))`, and so do their gradients: a pooled value passes its gradient to
  its argmax, and the ReLU there lets it through exactly when the pooled value is positive (for a clipped ReLU:
  inside (low, high)). Where a pool reads a rectifier's output made inside a submodule P (an `nn.ReLU`, or a block
  like torchvision's `BasicConv2d` that ends in `F.relu`), the pool masks its (small) output gradient and tells the
  rectifier's backward to pass the result on unchanged: the big rectifier backward (16 MB for a GoogLeNet stem at
  batch 16) is skipped.

`fast_pools(model, layers, probe)` returns replacements for `hooks.swap_modules`: shallow copies of the pools and of
the P modules (same children, parameters and hooks). Forward values are computed exactly as before (in place where
the model asked for it); the replacements are checked on the probe, values and input gradient, before use. No
rectifier is touched while a `RectifierMode` (guided backprop, redirected ReLUs) rewrites rectifier gradients.
"""

from __future__ import annotations

import contextlib
import copy
import sys
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakTensorKeyDictionary

from .. import hooks
from .._rectifiers import RectifierMode, match, passed, rectify_keeping, rewriting

__all__ = ["fast_pools"]


class _Link:
    """From a pool's backward to its rectifier's backward: the input gradient the pool returned, already masked."""

    __slots__ = ("grad", "version")

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None
        self.version = -1

    def hand(self, grad: torch.Tensor) -> None:
        self.grad, self.version = grad, grad._version

    def takes(self, grad: torch.Tensor) -> bool:
        """Whether `grad` is the masked gradient handed over, untouched (not summed with another consumer's)."""
        mine, self.grad = self.grad, None
        return (mine is not None and grad.data_ptr() == mine.data_ptr() and grad._version == self.version
                and grad.shape == mine.shape and grad.stride() == mine.stride())


class _Rect(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, low: float, high: float | None, inplace: bool,
                link: _Link) -> torch.Tensor:
        out, kept = rectify_keeping(ctx, x, low, high, inplace)
        ctx.save_for_backward(kept)
        ctx.link = link
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (kept,) = ctx.saved_tensors
        return (grad if ctx.link.takes(grad) else passed(grad, kept)), None, None, None, None


def _holders(t: torch.Tensor) -> tuple[int, int, int]:
    """(Python references, C++ references to the tensor, references to its memory): another Python name, autograd
    keeping it, or a view of it each raise one of them."""
    return sys.getrefcount(t), t._use_count(), torch._C._storage_Use_Count(t.untyped_storage()._cdata)


def _alone() -> tuple[int, int, int] | None:
    """What `_holders` says of a buffer held only by `_Scratch.buffers`, seen from `_Scratch.take`."""
    if not (hasattr(torch._C, "_storage_Use_Count") and hasattr(torch.Tensor, "_use_count")):
        return None
    buffers = {0: torch.empty(1)}
    buf = buffers[0]
    return _holders(buf)


_ALONE = _alone()


class _Scratch:
    """Memory a pool reuses from step to step, for its index map and its input gradient. A buffer is handed out
    again only while nothing else holds it (autograd from a pass not yet run backward, a hook that kept a
    gradient); else a new one replaces it. Without torch's use counts, nothing is reused."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, name: str, r: torch.Tensor, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The buffer `name` for pool input `r`, or `make()` (stored for next time)."""
        key = (name, r.shape, r.stride(), r.dtype, r.device)
        buf = self.buffers.get(key)
        if buf is None or _ALONE is None or _holders(buf) != _ALONE:
            self.buffers = {k: v for k, v in self.buffers.items() if k[0] != name}  # one size at a time
            buf = self.buffers[key] = make()
        return buf


class _Pool(torch.autograd.Function):
    """`max_pool2d(r)` with reused index and gradient memory; with a link, the gradient is also masked by the
    rectifier that made `r` (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, r: torch.Tensor, geometry: tuple, scratch: _Scratch,
                rectifier: tuple[_Link, float, float | None] | None) -> torch.Tensor:
        where = scratch.take("where", r, lambda: r.new_empty(0, dtype=torch.long))  # sized by the first call
        pooled, where = torch.ops.aten.max_pool2d_with_indices.out(r, *geometry, out=r.new_empty(0), indices=where)
        ctx.save_for_backward(r, where, pooled if rectifier else None)
        ctx.geometry, ctx.scratch, ctx.rectifier = geometry, scratch, rectifier
        return pooled

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        r, where, pooled = ctx.saved_tensors
        if ctx.rectifier is not None:
            link, low, high = ctx.rectifier
            if high is None:
                grad = torch.ops.aten.threshold_backward(grad, pooled, low)
            else:
                grad = grad * ((pooled > low) & (pooled < high))
        memory = ctx.scratch.take("grad", r, lambda: torch.empty_strided(r.shape, r.stride(), dtype=r.dtype,
                                                                         device=r.device))
        out = torch.ops.aten.max_pool2d_with_indices_backward.grad_input(grad, r, *ctx.geometry, where,
                                                                         grad_input=memory)
        if ctx.rectifier is not None:
            ctx.rectifier[0].hand(out)
        return out, None, None, None


class _Linking(RectifierMode):
    """Inside P: rectifier calls that need a gradient go through `_Rect`, and their outputs are remembered. Not
    while a mode that changes rectifier gradients is active."""

    exact = True

    def __init__(self, links: WeakTensorKeyDictionary):
        super().__init__()
        self.links = links

    def takes(self, high: float | None) -> bool:
        return not rewriting()

    def rectified(self, x: torch.Tensor, low: float, high: float | None, inplace: bool) -> torch.Tensor:
        link = _Link()
        out = _Rect.apply(x, low, high, inplace, link)
        self.links[out] = (link, low, high)
        return out


def _linked_producer(module: nn.Module, links: WeakTensorKeyDictionary) -> nn.Module:
    """A shallow copy of `module` (same children, parameters and hooks) whose calls run under `_Linking`."""
    inner = module.forward
    twin = copy.copy(module)

    def forward(*args: Any, **kwargs: Any) -> Any:
        with _Linking(links):
            return inner(*args, **kwargs)

    twin.forward = forward
    return twin


def _fast_pool(pool: nn.MaxPool2d, links: WeakTensorKeyDictionary | None, ran: set[int]) -> nn.Module:
    """A shallow copy of `pool` that runs `_Pool` where gradients flow, linked to the rectifier outputs in `links`;
    adds its id to `ran` when it runs so."""
    inner = pool.forward
    twin = copy.copy(pool)
    stride = pool.stride if pool.stride is not None else pool.kernel_size
    geometry = (_pair(pool.kernel_size), _pair(stride), _pair(pool.padding), _pair(pool.dilation), pool.ceil_mode)
    scratch = _Scratch()

    def forward(x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad and x.ndim in (3, 4)):
            return inner(x)
        rectifier = links.get(x) if links is not None and not rewriting() else None
        ran.add(id(twin))
        return _Pool.apply(x, geometry, scratch, rectifier)

    twin.forward = forward
    return twin


class _Spotting(TorchFunctionMode):
    """Probe pass: which module was running when each rectifier output was made."""

    def __init__(self, running: list[str]):
        super().__init__()
        self.running, self.made, self.kept = running, {}, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if match(func, args, kwargs or {}) is not None and isinstance(out, torch.Tensor) and self.running:
            self.made[id(out)] = self.running[-1]
            self.kept.append(out)  # ids stay unique while the pass runs
        return out


@contextlib.contextmanager
def _watching(model: nn.Module, pools: Sequence[str]) -> Iterator[dict[str, str]]:
    """Yields {pool path: path of the module whose rectifier made the pool's input}, filled by the passes run in
    the block."""
    pools = set(pools)
    running: list[str] = []
    spot = _Spotting(running)
    feeds: dict[str, str] = {}
    handles = []

    def enter(path: str):
        def pre(module: nn.Module, args: tuple) -> None:
            if path in pools and args and isinstance(args[0], torch.Tensor) and id(args[0]) in spot.made:
                maker = spot.made[id(args[0])]
                if maker not in pools:
                    feeds.setdefault(path, maker)
            running.append(path)
        return pre

    def leave(module: nn.Module, args: tuple, output: Any) -> None:
        running.pop()

    try:
        for path, module in model.named_modules():
            if path:
                handles.append(module.register_forward_pre_hook(enter(path)))
                handles.append(module.register_forward_hook(leave, always_call=True))
        with spot:
            yield feeds
    finally:
        for handle in handles:
            handle.remove()


def _pass(model: nn.Module, layers: Sequence[str], probe: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    x = probe.detach().clone().requires_grad_(True)
    with torch.enable_grad(), hooks.capture(model, list(layers), detach=False, stop=bool(layers)) as cap:
        out = cap.run(x)
        values = [cap.activations[name] for name in layers] if layers else [out]
        (grad,) = torch.autograd.grad(sum(v.square().sum() for v in values), x)
    return [v.detach() for v in values], grad


def fast_pools(model: nn.Module, layers: Sequence[str], probe: torch.Tensor) -> dict[str, nn.Module]:
    """Replacements `{path: module}` for `hooks.swap_modules` (see the module docstring): every `nn.MaxPool2d`
    that returns no indices and runs on the way to `layers` (the whole model when `layers` is empty), and every
    module whose rectifier output such a pool reads on `probe` (B, C, H, W). {} when there is no such pool, or when
    the replaced model does not give the same `layers` activations (the model's output when `layers` is empty) and
    input gradient on `probe`."""
    pools = [path for path, m in model.named_modules() if isinstance(m, nn.MaxPool2d) and not m.return_indices]
    if not pools:
        return {}
    with _watching(model, pools) as feeds:
        plain_values, plain_grad = _pass(model, layers, probe)
    links = {maker: WeakTensorKeyDictionary() for maker in feeds.values()}
    replacements = {maker: _linked_producer(hooks.get_module(model, maker), links[maker]) for maker in links}
    ran: set[int] = set()
    replacements.update({pool: _fast_pool(hooks.get_module(model, pool), links.get(feeds.get(pool, "")), ran)
                         for pool in pools})
    try:
        with hooks.swap_modules(model, replacements):
            values, grad = _pass(model, layers, probe)
    except (RuntimeError, NotImplementedError):  # an aten variant this device lacks: the plain pass ran, so use it
        return {}
    scale = float(plain_grad.abs().max()) or 1.0
    same = (all(torch.equal(a, b) for a, b in zip(plain_values, values))
            and torch.allclose(plain_grad, grad, rtol=1e-5, atol=1e-6 * scale))
    if not same:
        return {}
    # the passes that learn where to stop run the whole model: keep what the stopping pass used
    used = {pool for pool in pools if id(replacements[pool]) in ran}
    makers = {feeds[pool] for pool in used if pool in feeds}
    return {path: module for path, module in replacements.items() if path in used or path in makers}
