"""Redirected ReLU gradients (Lucid's `redirected_relu_grad`), so units that are zero at the start can wake up.

A channel after a ReLU that is negative everywhere on the starting image has zero gradient: plain ascent would
never move it, and it would be reported dead although images exist that make it fire. While active, this mode
changes the backward pass of every rectifier (ReLU, ReLU6, Hardtanh(0, m), module or functional): for a batch
item whose true gradient through that rectifier is zero everywhere, the gradient is passed through anyway, except
where it would push an already negative input further down. Items whose true gradient is non-zero are unchanged.
`render` uses it only while some item's objective is exactly zero; a unit that stays at zero even so is dead.
The gradients here are those of the objective (ascent), not of a loss.
"""

from __future__ import annotations

from typing import Any

import torch

from .._rectifiers import RectifierMode, passed, rectify_keeping

__all__ = ["RedirectedReLU"]


class _Redirect(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mode: "RedirectedReLU", low: float, high: float | None,
                inplace: bool) -> torch.Tensor:
        ctx.items = mode.items
        below = None if high is None else x <= low  # a ReLU's output tells this itself (out == 0)
        out, kept = rectify_keeping(ctx, x, low, high, inplace)
        ctx.save_for_backward(kept, below)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        kept, below = ctx.saved_tensors
        true = passed(grad, kept)
        items = ctx.items
        if true.ndim == 0 or items.numel() == 0 or int(items.max()) >= true.shape[0]:
            return true, None, None, None, None
        # only the asleep items, and only where their true gradient is zero everywhere (Lucid's rule)
        dead = items[true[items].flatten(1).abs().amax(1) == 0]
        if dead.numel():
            g = grad[dead]
            below = kept[dead] <= 0 if below is None else below[dead]
            # grad is d(objective)/d(output), followed upwards: grad < 0 below the threshold would push the input
            # further down
            true[dead] = torch.where(below & (g < 0), 0.0, g)
        return true, None, None, None, None


class RedirectedReLU(RectifierMode):
    """Use under `hooks.function_mode(RedirectedReLU(items))` around the forward pass; `items` (K,) are the batch
    indices of the asleep items (the others keep their true gradients)."""

    function = _Redirect

    def __init__(self, items: torch.Tensor):
        super().__init__()
        self.items = items
