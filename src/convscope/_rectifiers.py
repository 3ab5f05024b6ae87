"""Rectifier calls as a `TorchFunctionMode` sees them, for the modes that rewrite a rectifier's backward pass.

`nn.ReLU` modules, `F.relu` (also with `inplace=True`), `torch.relu(_)` and `Tensor.relu(_)` all end in the functions
of `RELU`; `ReLU6` / `F.relu6` and `Hardtanh(0, m)` in `F.relu6` / `F.hardtanh`. A mode therefore covers functional
rectifiers like modules, and a module used several times per forward pass at every call.

`RectifierMode` sends each rectifier call that needs a gradient through its `function` (an autograd Function whose
forward is `rectify`): `attribution._rules.RectifierRules` (DeconvNet, guided backprop) and
`featvis._redirect.RedirectedReLU` (waking dead units) differ only in that Function's backward.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["RELU", "RectifierMode", "argument", "match", "passed", "rectify", "rectify_keeping", "rewriting"]

_ACTIVE = threading.local()  # how many RectifierModes this thread is inside

# Functions that are a ReLU, with whether they work in place (F.relu reads its `inplace` argument).
RELU: dict[Any, bool] = {
    F.relu: False,
    torch.relu: False,
    torch.Tensor.relu: False,
    torch.relu_: True,  # also F.relu_
    torch.Tensor.relu_: True,
}


def argument(args: tuple, kwargs: dict, index: int, name: str, default: Any) -> Any:
    """Argument `index` of a call as a mode sees it, given by position or as `name=`; `default` when absent."""
    return args[index] if len(args) > index else kwargs.get(name, default)


def match(func, args: tuple, kwargs: dict) -> tuple[torch.Tensor, float, float | None, bool] | None:
    """(input, low, high, inplace) when `func(*args, **kwargs)` is a rectifier call, else None. `high` is None for a
    ReLU; a clipped ReLU lets its input through on the open interval (low, high)."""
    if func in RELU:
        inplace = RELU[func] if func is not F.relu else bool(argument(args, kwargs, 1, "inplace", False))
        return argument(args, kwargs, 0, "input", None), 0.0, None, inplace
    if func is F.relu6:
        return argument(args, kwargs, 0, "input", None), 0.0, 6.0, bool(argument(args, kwargs, 1, "inplace", False))
    if func is F.hardtanh:
        low = float(argument(args, kwargs, 1, "min_val", -1.0))
        high = float(argument(args, kwargs, 2, "max_val", 1.0))
        if low == 0.0 and high > 0.0:  # Hardtanh(0, m) is a clipped ReLU; Hardtanh(-1, 1) is not a rectifier
            inplace = bool(argument(args, kwargs, 3, "inplace", False))
            return argument(args, kwargs, 0, "input", None), low, high, inplace
    return None


def rectify(ctx: Any, x: torch.Tensor, low: float, high: float | None, inplace: bool) -> torch.Tensor:
    """The rectifier's own forward, for an autograd Function's `forward`: in place when asked (marking `x` dirty),
    so anything the backward needs from `x` must be taken before."""
    if high is None:
        out = torch.relu_(x) if inplace else torch.relu(x)
    else:
        out = F.hardtanh(x, low, high, inplace=inplace)
    if inplace:
        ctx.mark_dirty(x)
    return out


def rectify_keeping(ctx: Any, x: torch.Tensor, low: float, high: float | None,
                    inplace: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`rectify`, plus what the rectifier's true backward (`passed`) needs: for a ReLU its output (as torch's own
    ReLU keeps), for a clipped ReLU its open-interval mask, taken before an in-place call overwrites `x`."""
    mask = None if high is None else (x > low) & (x < high)
    out = rectify(ctx, x, low, high, inplace)
    return out, out if mask is None else mask


def passed(grad: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The rectifier's true backward: `grad` where the forward pass let the input through, else 0. `kept` is what
    `rectify_keeping` returned (a bool mask for a clipped ReLU). For a ReLU, `kept` is its output (>= 0), whose sign
    is the mask: what torch's own ReLU backward computes, with public ops only (`torch.where` and `masked_fill` cost
    5-10x more on channels-last CPU tensors)."""
    if kept.dtype == torch.bool:
        return grad * kept
    return grad * kept.sign()


class RectifierMode(TorchFunctionMode):
    """Runs every rectifier call whose input needs a gradient as `rectified(x, low, high, inplace)` (by default
    `function.apply(x, self, low, high, inplace)`); everything else, and calls `takes` declines, as written.

    A mode whose backward is the rectifier's own, only computed differently, sets `exact = True`: `rewriting()`
    does not count it."""

    function: type[torch.autograd.Function]
    exact = False

    def __enter__(self):
        if not self.exact:
            _ACTIVE.depth = getattr(_ACTIVE, "depth", 0) + 1
        return super().__enter__()

    def __exit__(self, *exc: Any):
        if not self.exact:
            _ACTIVE.depth -= 1
        return super().__exit__(*exc)

    def rectified(self, x: torch.Tensor, low: float, high: float | None, inplace: bool) -> torch.Tensor:
        """The rewritten rectifier call."""
        return self.function.apply(x, self, low, high, inplace)

    def takes(self, high: float | None) -> bool:
        """Whether to rewrite this rectifier call (`high` is None for a ReLU); seen for every call, with or without
        gradients."""
        return True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = match(func, args, kwargs)
        if found is None:
            return func(*args, **kwargs)
        x, low, high, inplace = found
        if not (self.takes(high) and torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            return func(*args, **kwargs)
        return self.rectified(x, low, high, inplace)


def rewriting() -> bool:
    """Whether a `RectifierMode` that changes gradients (guided backprop, DeconvNet, redirected ReLUs) is active on
    this thread; other code that would change a rectifier's autograd should then leave it alone."""
    return getattr(_ACTIVE, "depth", 0) > 0
