"""Regularizers: the classic ways to keep a synthesized image readable, each a small piece with its literature
default.

Two kinds:

- *Penalties* (`Penalty`): a differentiable cost per item, (B, C, H, W) pixels in [0, 1] -> (B,), subtracted from
  the objective with its `weight`: `L1`, `L2` (Simonyan et al. 2014), `TotalVariation` (Mahendran & Vedaldi 2015),
  `EdgePenalty` (Scharr gradient magnitude) and `ColorPenalty` (distance from grey); `sharpness(s)` gives the
  edge + colour pair with one knob.
- *Projections* (`Projection`): an operation on the pixels between steps (Yosinski et al. 2015): `ClipRange`,
  `Decay` (L2 decay), `Blur` (Gaussian blur every k steps), `ClipNorm` (zero pixels of small norm) and
  `ClipContribution` (zero pixels of small contribution). They act on pixels, so they need `param="pixel"`.

"Zero" means the centre of pixel space, `center` (the model's mean pixel when it normalizes, else grey 0.5), which
is the model's 0 input: clipping in pixel space is clipping of the model's input after undoing its normalization.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Penalty", "Projection", "L1", "L2", "TotalVariation", "EdgePenalty", "ColorPenalty", "sharpness",
           "ClipRange", "Decay", "Blur", "ClipNorm", "ClipContribution", "gaussian_blur"]


class Penalty:
    """A cost per item, (B, C, H, W) pixels -> (B,), already multiplied by `weight`."""

    weight: float

    def __call__(self, pixels: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        return self.weight * self.cost(pixels, center)

    def cost(self, pixels: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class Projection:
    """An in-place change of the pixels (B, C, H, W) after step `step` (0-based); `grad` is the ascent direction
    of the objective w.r.t. the pixels at that step."""

    def __call__(self, pixels: torch.Tensor, grad: torch.Tensor, step: int, center: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class L1(Penalty):
    """Mean |pixel - center| (Simonyan et al.'s class models use the L2 version)."""

    weight: float = 0.05

    def cost(self, pixels, center):
        return (pixels - center).abs().flatten(1).mean(1)


@dataclass(frozen=True)
class L2(Penalty):
    """Mean (pixel - center)^2: Simonyan et al. 2014's `lambda * ||I||^2`."""

    weight: float = 0.1

    def cost(self, pixels, center):
        return (pixels - center).pow(2).flatten(1).mean(1)


@dataclass(frozen=True)
class TotalVariation(Penalty):
    """Mean of (dx^2 + dy^2)^(beta / 2) over pixels (Mahendran & Vedaldi 2015 use beta = 2)."""

    weight: float = 0.5
    beta: float = 2.0

    def cost(self, pixels, center):
        dx = pixels[..., :-1, 1:] - pixels[..., :-1, :-1]
        dy = pixels[..., 1:, :-1] - pixels[..., :-1, :-1]
        return (dx * dx + dy * dy + 1e-8).pow(self.beta / 2).flatten(1).mean(1)


_SCHARR = torch.tensor([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 32.0


def _scharr(pixels: torch.Tensor) -> torch.Tensor:
    """Edge magnitude (B, C, H, W) from Scharr derivatives per channel (replicate padding)."""
    c = pixels.shape[1]
    kx = _SCHARR.to(pixels.device, pixels.dtype)
    kernels = torch.stack([kx, kx.T]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    padded = F.pad(pixels, (1, 1, 1, 1), mode="replicate")
    d = F.conv2d(padded, kernels, groups=c).unflatten(1, (c, 2))
    return (d.pow(2).sum(2) + 1e-8).sqrt()


@dataclass(frozen=True)
class EdgePenalty(Penalty):
    """Mean Scharr edge magnitude: high-frequency patterns cost, smooth regions don't."""

    weight: float = 0.1

    def cost(self, pixels, center):
        return _scharr(pixels).flatten(1).mean(1)


@dataclass(frozen=True)
class ColorPenalty(Penalty):
    """Mean colour magnitude ||pixel - center|| over channels: saturated pixels cost."""

    weight: float = 0.05

    def cost(self, pixels, center):
        return ((pixels - center).pow(2).sum(1) + 1e-8).sqrt().flatten(1).mean(1)


def sharpness(value: float = 5.0) -> list[Penalty]:
    """Edge and colour penalties from one knob: 0 = very smooth and muted, 10 = almost unpenalized (weights fall
    by half every 1.5 units)."""
    factor = 0.5 ** (float(value) / 1.5)
    return [EdgePenalty(2.0 * factor), ColorPenalty(0.5 * factor)]


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) with standard deviation `sigma` pixels (reflect padding)."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(3 * sigma)))
    radius = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


@dataclass(frozen=True)
class ClipRange(Projection):
    """Clip pixels to [low, high] (the valid image range; the model's normalization is applied afterwards)."""

    low: float = 0.0
    high: float = 1.0

    def __call__(self, pixels, grad, step, center):
        return pixels.clamp(self.low, self.high)


@dataclass(frozen=True)
class Decay(Projection):
    """L2 decay: pull pixels towards `center` by a fraction `rate` per step (Yosinski et al.: 0.0001-0.3)."""

    rate: float = 0.01

    def __call__(self, pixels, grad, step, center):
        return center + (pixels - center) * (1.0 - self.rate)


@dataclass(frozen=True)
class Blur(Projection):
    """Gaussian blur of width `sigma` every `every` steps (Yosinski et al.: sigma 0.5-1, every 4 steps)."""

    sigma: float = 1.0
    every: int = 4

    def __call__(self, pixels, grad, step, center):
        return gaussian_blur(pixels, self.sigma) if (step + 1) % self.every == 0 else pixels


def _below(values: torch.Tensor, percentile: float) -> torch.Tensor:
    """(B, H, W) -> mask of positions below the per-item `percentile` (0-100)."""
    threshold = torch.quantile(values.flatten(1), percentile / 100.0, dim=1).view(-1, 1, 1)
    return values < threshold


@dataclass(frozen=True)
class ClipNorm(Projection):
    """Set pixels whose colour norm ||pixel - center|| is below the `percentile` to `center`
    (Yosinski et al.: 0-50%)."""

    percentile: float = 20.0

    def __call__(self, pixels, grad, step, center):
        norm = (pixels - center).pow(2).sum(1).sqrt()
        return torch.where(_below(norm, self.percentile).unsqueeze(1), center.expand_as(pixels), pixels)


@dataclass(frozen=True)
class ClipContribution(Projection):
    """Set pixels whose contribution |sum_c (pixel - center) * grad| (the linearized change of the objective if
    the pixel were set to `center`) is below the `percentile` to `center` (Yosinski et al.: 0-90%)."""

    percentile: float = 50.0

    def __call__(self, pixels, grad, step, center):
        contribution = ((pixels - center) * grad).sum(1).abs()
        return torch.where(_below(contribution, self.percentile).unsqueeze(1), center.expand_as(pixels), pixels)
