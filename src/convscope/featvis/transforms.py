"""Random geometric transforms applied to the image before each forward pass ("transformation robustness").

Each piece (`pad`, `jitter`, `scale`, `rotate`) is an affine map drawn per batch item from that item's
`torch.Generator`; a `Transforms` chain multiplies the maps and resamples once with `affine_grid`/`grid_sample`
(bilinear), so a chain of five pieces costs one interpolation and the output keeps the input's size. The backward
pass warps the gradient back with the inverse map (the adjoint up to interpolation error; `exact=True` uses
`grid_sample`'s own, much slower, scatter backward). Areas outside
the image read as `fill` (grey 0.5 by default, as Lucid's constant padding).

`standard_transforms()` is Lucid's chain: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4
(pixel amounts scaled down for images under 128 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Transform", "Transforms", "pad", "jitter", "scale", "rotate", "standard_transforms", "no_transforms"]


def _choice(values: Sequence[float], generator: torch.Generator) -> float:
    return float(values[int(torch.randint(len(values), (1,), generator=generator))])


@dataclass(frozen=True)
class Transform:
    """One random affine piece; `matrix` gives, per item, the 3x3 map from output to input pixel coordinates
    (centred, in pixels)."""

    kind: str
    amount: float | tuple[float, ...]

    def matrix(self, generator: torch.Generator, size: tuple[int, int]) -> np.ndarray:
        eye = np.eye(3)
        if self.kind == "pad":  # show the image smaller inside a border of `amount` pixels
            eye[0, 0] = eye[1, 1] = (max(size) + 2 * float(self.amount)) / max(size)
        elif self.kind == "jitter":
            d = int(self.amount)
            shift = torch.randint(-d, d + 1, (2,), generator=generator).tolist()
            eye[0, 2], eye[1, 2] = shift
        elif self.kind == "scale":
            eye[0, 0] = eye[1, 1] = 1.0 / _choice(self.amount, generator)
        elif self.kind == "rotate":
            angle = math.radians(_choice(self.amount, generator))
            c, s = math.cos(angle), math.sin(angle)
            eye[:2, :2] = [[c, -s], [s, c]]
        return eye

    def __str__(self) -> str:
        amount = self.amount
        if isinstance(amount, tuple) and len(amount) > 3:
            amount = f"{min(amount):g}..{max(amount):g}"
        return f"{self.kind}({amount})"


def pad(pixels: int = 12) -> Transform:
    """Shrink the content as if padded by `pixels` on every side (Lucid pads by 12 with grey)."""
    return Transform("pad", float(pixels))


def jitter(pixels: int = 8) -> Transform:
    """Shift by a random integer number of pixels in [-pixels, pixels], independently in x and y."""
    return Transform("jitter", float(pixels))


def scale(factors: Sequence[float] = tuple(1 + (i - 5) / 50.0 for i in range(11))) -> Transform:
    """Zoom by a factor chosen uniformly from `factors` (Lucid: 0.90, 0.92, ..., 1.10)."""
    return Transform("scale", tuple(float(f) for f in factors))


def rotate(degrees: Sequence[float] = tuple(range(-10, 11)) + (0,) * 5) -> Transform:
    """Rotate by an angle chosen uniformly from `degrees` (Lucid: -10..10, with extra weight on 0)."""
    return Transform("rotate", tuple(float(d) for d in degrees))


def _sample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """`grid_sample(x, affine_grid(theta))` with the grid built elementwise (CPU `affine_grid` is a slow bmm)."""
    height, width = x.shape[-2:]
    xs = (torch.arange(width, device=x.device, dtype=x.dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=x.device, dtype=x.dtype) * 2 + 1) / height - 1
    t = theta.reshape(-1, 6, 1, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys[:, None] + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys[:, None] + t[:, 5]
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _Warp(torch.autograd.Function):
    """Bilinear warp whose backward is the inverse warp scaled by |det|^-1: the adjoint of the warp up to
    interpolation error. PyTorch's own backward of `grid_sample` scatters and is ~6x slower than the forward on
    CPU, where it would cost as much as a third of a small network's step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        ctx.maps = maps
        return _sample(x, maps[:, :2].to(x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        inverse = torch.linalg.inv(ctx.maps)
        det = torch.linalg.det(inverse[:, :2, :2]).abs().view(-1, 1, 1, 1)
        return _sample(grad, inverse[:, :2].to(grad)) * det.to(grad), None


class Transforms:
    """A chain of random affine pieces applied with one resampling; `Transforms([])` is the identity."""

    def __init__(self, pieces: Sequence[Transform] = (), *, fill: float = 0.5, exact: bool = False):
        self.pieces = tuple(pieces)
        self.fill = fill
        self.exact = exact

    def matrices(self, generators: Sequence[torch.Generator], size: tuple[int, int]) -> torch.Tensor:
        """(B, 3, 3) float64 maps from output to input in `affine_grid`'s normalized coordinates, item i's pieces
        drawn from generator i in chain order."""
        height, width = size
        # centred pixel coordinates <-> affine_grid's normalized coordinates (align_corners=False)
        to_pixels = np.diag([width / 2.0, height / 2.0, 1.0])
        to_norm = np.diag([2.0 / width, 2.0 / height, 1.0])
        thetas = []
        for g in generators:
            m = np.eye(3)
            for piece in self.pieces:  # output -> input: the first piece applied is the leftmost factor
                m = m @ piece.matrix(g, size)
            thetas.append(to_norm @ m @ to_pixels)
        return torch.from_numpy(np.stack(thetas))

    def __call__(self, pixels: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) transformed, item i with generator i."""
        if not self.pieces:
            return pixels
        maps = self.matrices(generators, tuple(pixels.shape[-2:]))
        if self.exact:
            return _sample(pixels - self.fill, maps[:, :2].to(pixels)) + self.fill
        return _Warp.apply(pixels - self.fill, maps) + self.fill

    def __len__(self) -> int:
        return len(self.pieces)

    def __str__(self) -> str:
        return "[" + ", ".join(str(p) for p in self.pieces) + "]"

    def describe(self) -> list[str]:
        return [str(p) for p in self.pieces]


def standard_transforms(size: tuple[int, int] | None = None) -> Transforms:
    """Lucid's standard chain: pad(12), jitter(8), scale(0.9..1.1), rotate(-10..10), jitter(4), for images of at
    least 128 pixels; for smaller images (`size`) the pixel amounts shrink in proportion (a 28-pixel image gets
    pad 3, jitter 2 and 1), so the chain moves the image as much relative to its size."""
    f = 1.0 if size is None else min(1.0, min(size) / 128.0)
    return Transforms([pad(round(12 * f)), jitter(max(1, round(8 * f))), scale(), rotate(),
                       jitter(max(1, round(4 * f)))])


def no_transforms() -> Transforms:
    return Transforms([])
