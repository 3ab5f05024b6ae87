"""Update rules: how a gradient becomes a step. Every rule works per batch item, so units rendered together in
one batch take the same steps as rendered alone.

- `"adam"`: Adam (lr 0.05, as Lucid), the default for the Fourier parameterization.
- `"ascent"`: plain gradient ascent with the gradient divided by its max-abs per item, so one step size (the
  largest change of any parameter per step) works for every layer and unit.
- `"laplacian"`: DeepDream's Laplacian-pyramid normalized gradient: the gradient is split into `levels` frequency
  bands, each divided by its own RMS, and merged, so low frequencies move as fast as high ones. Pixels only.
- `"smooth"`: the gradient replaced by the mean of Gaussian blurs at several widths, applied `rounds` times
  recursively, then max-abs normalized. Pixels only.

A rule is `Step(params, lr)`, then `step(grads)` with the gradients of the loss to *minimize* (minus the objective).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from .regularizers import gaussian_blur

__all__ = ["Step", "Adam", "Ascent", "Laplacian", "Smooth", "make_step", "laplacian_normalize", "OptimizerName",
           "DEFAULT_LR"]

OptimizerName = Literal["adam", "ascent", "laplacian", "smooth"]
DEFAULT_LR = {"adam": 0.05, "ascent": 0.01, "laplacian": 0.002, "smooth": 0.01}
PIXELS_ONLY = ("laplacian", "smooth")


def _per_item_maxabs(g: torch.Tensor) -> torch.Tensor:
    return g.abs().flatten(1).amax(1).clamp(min=1e-12).view(-1, *([1] * (g.ndim - 1)))


class Step:
    """Base: holds the parameters (batch first) and updates them in place."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float):
        self.params = list(params)
        self.lr = lr

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        return g

    @torch.no_grad()
    def __call__(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.sub_(self.lr * self.direction(g))


class Adam(Step):
    def __init__(self, params: Sequence[torch.Tensor], lr: float):
        super().__init__(params, lr)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)

    def __call__(self, grads: Sequence[torch.Tensor]) -> None:
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        for p in self.params:
            p.grad = None


class Ascent(Step):
    def direction(self, g: torch.Tensor) -> torch.Tensor:
        return g / _per_item_maxabs(g)


def _binomial(channels: int, like: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], device=like.device, dtype=like.dtype)
    k = torch.outer(k, k) / 256.0
    return k.expand(channels, 1, 5, 5)


def _down(x: torch.Tensor) -> torch.Tensor:
    k = _binomial(x.shape[1], x)
    pad = (2, 2, 2, 2)
    return F.conv2d(F.pad(x, pad, mode="replicate"), k, stride=2, groups=x.shape[1])


def _up(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def laplacian_normalize(g: torch.Tensor, levels: int = 4) -> torch.Tensor:
    """(B, C, H, W) -> the same signal with every Laplacian-pyramid band divided by its per-item RMS."""
    bands = []
    current = g
    for _ in range(levels - 1):
        if min(current.shape[-2:]) < 4:
            break
        low = _down(current)
        bands.append(current - _up(low, tuple(current.shape[-2:])))
        current = low
    bands.append(current)
    out = None
    for band in reversed(bands):
        rms = band.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-10).view(-1, 1, 1, 1)
        band = band / rms
        out = band if out is None else _up(out, tuple(band.shape[-2:])) + band
    return out


class Laplacian(Step):
    def __init__(self, params: Sequence[torch.Tensor], lr: float, levels: int = 4):
        super().__init__(params, lr)
        self.levels = levels

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        return laplacian_normalize(g, self.levels)


class Smooth(Step):
    def __init__(self, params: Sequence[torch.Tensor], lr: float, widths: Sequence[float] = (0.5, 1.0, 2.0, 4.0),
                 rounds: int = 1):
        super().__init__(params, lr)
        self.widths = tuple(widths)
        self.rounds = rounds

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        for _ in range(self.rounds):
            g = sum(gaussian_blur(g, s) for s in self.widths) / len(self.widths)
        return g / _per_item_maxabs(g)


_RULES = {"adam": Adam, "ascent": Ascent, "laplacian": Laplacian, "smooth": Smooth}


def make_step(name: str | Step, params: Sequence[torch.Tensor], lr: float | None, **options) -> Step:
    """An update rule by name (`"adam" | "ascent" | "laplacian" | "smooth"`) with `lr` (None: its default)."""
    if name not in _RULES:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(_RULES)}")
    return _RULES[name](params, DEFAULT_LR[name] if lr is None else lr, **options)
