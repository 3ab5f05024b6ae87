"""Backward rules for rectifiers: how DeconvNet and guided backpropagation change the gradient of a ReLU.

A rule is a tiny class with one job: given the gradient arriving at a rectifier's output and `through`, the
rectifier's true backward (keep the gradient where the forward pass let the input through), return the gradient sent
to its input.

- `Gradient`: the true gradient, `g * mask`.
- `Deconv` (Zeiler & Fergus 2014): `max(g, 0)`, ignoring the forward mask.
- `Guided` (Springenberg et al. 2015): `max(g, 0) * mask`, both masks.

`RectifierRules` is a `TorchFunctionMode` (`convscope._rectifiers.RectifierMode`) that swaps every rectifier call
made during the forward pass for a custom autograd Function applying the current rule: functional ReLUs are covered
like modules, and a module used several times per forward pass is handled at every call.

Which functions count as rectifiers (`rectifiers=`):
- "relu": ReLU only, the literature's definition.
- "all" (default): also the clipped ReLUs, `ReLU6` / `F.relu6` / `Hardtanh(0, m)`, whose forward mask is the open
  interval `0 < x < m`. MobileNet-style networks use only ReLU6; with "relu" their guided map is the plain
  gradient. Other nonlinearities (GELU, SiLU, leaky ReLU, `clamp`) are never changed.

The rule is read when the backward pass runs (`mode.rule = ...`), so one forward pass can serve a true-gradient
backward (Grad-CAM) and a guided backward (Guided Grad-CAM).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import torch

from .._rectifiers import RectifierMode, passed, rectify_keeping
from ..errors import TargetError

__all__ = ["Gradient", "Deconv", "Guided", "RULES", "RectifierRules", "Rectifiers"]

Rectifiers = Literal["relu", "all"]


class Gradient:
    """The true gradient of the rectifier."""

    @staticmethod
    def backward(grad: torch.Tensor, through: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return through(grad)


class Deconv:
    """DeconvNet: pass positive gradients, whatever the forward pass did."""

    @staticmethod
    def backward(grad: torch.Tensor, through: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return grad.clamp_min(0.0)


class Guided:
    """Guided backpropagation: positive gradients, and only where the forward pass was active."""

    @staticmethod
    def backward(grad: torch.Tensor, through: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return through(grad).clamp_min_(0.0)


RULES: dict[str, type] = {"gradient": Gradient, "deconvnet": Deconv, "guided": Guided}


class _Rectify(torch.autograd.Function):
    """`func(x)` in forward (in place when asked); the owning mode's current rule in backward.

    A rule gets `through(g)`, the rectifier's true backward (g where the forward pass let x through, else 0:
    `_rectifiers.passed` on what `rectify_keeping` saved, the output of a ReLU or the mask of a clipped ReLU).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mode: "RectifierRules", low: float, high: float | None,
                inplace: bool) -> torch.Tensor:
        ctx.mode = mode
        out, kept = rectify_keeping(ctx, x, low, high, inplace)
        ctx.save_for_backward(kept)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (kept,) = ctx.saved_tensors
        ctx.mode.ruled += 1
        return RULES[ctx.mode.rule].backward(grad, lambda g: passed(g, kept)), None, None, None, None


class RectifierRules(RectifierMode):
    """Replace rectifier calls by `_Rectify` with rule `rule` ("gradient", "deconvnet", "guided").

    `calls` counts the rectifier calls seen per kind ("relu", "clipped", and "clipped (left)" for clipped ReLUs
    left unchanged under `rectifiers="relu"`); `ruled` counts the rule's applications in backward passes, i.e. the
    rectifiers between the input and the score (a forward pass may run past the target: `hooks.capture(stop=True)`
    runs the whole network once per input shape).
    """

    function = _Rectify

    def __init__(self, rule: str, rectifiers: Rectifiers = "all") -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}; choose from {sorted(RULES)}")
        if rectifiers not in ("relu", "all"):
            raise ValueError(f"rectifiers must be 'relu' or 'all', got {rectifiers!r}")
        self.rule = rule
        self.rectifiers = rectifiers
        self.calls: Counter[str] = Counter()
        self.ruled = 0

    def takes(self, high: float | None) -> bool:
        if high is not None and self.rectifiers == "relu":
            self.calls["clipped (left)"] += 1
            return False
        self.calls["relu" if high is None else "clipped"] += 1
        return True

    def check_used(self, method: str, model: torch.nn.Module) -> None:
        """Refuse a result that would silently be the plain gradient: the backward pass (call this after it) met
        no rectifier that the rule changes, whatever the forward pass ran after the target. `model` is the network run
        (a TorchScript model hides its ReLUs from the mode)."""
        if self.ruled:
            return
        if self.calls["clipped (left)"]:
            hint = (" The model uses clipped ReLUs (ReLU6/Hardtanh(0, m)); pass rectifiers='all' to apply the rule to "
                    "them.")
        elif isinstance(model, torch.jit.ScriptModule):
            hint = " TorchScript models hide their ReLUs; load the Python model instead."
        else:
            hint = " The target comes before every ReLU: pick a later layer, or use saliency."
        raise TargetError(f"{method}: no ReLU lies between the input and the target, so the rule changes nothing and "
                          f"the map would be the plain gradient.{hint}")

