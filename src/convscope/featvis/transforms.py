"""Random geometric transforms applied to the image before each forward pass ("transformation robustness").

Each piece (`pad`, `jitter`, `scale`, `rotate`) is an affine map drawn per batch item from that item's
`torch.Generator`; a `Transforms` chain multiplies the maps and resamples once with `affine_grid`/`grid_sample`
(bilinear), so a chain of five pieces costs one interpolation and the output keeps the input's size. Areas outside
the image read as `fill` (grey 0.5 by default, as Lucid's constant padding).

`standard_transforms()` is Lucid's chain: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4
(pixel amounts scaled down for images under 128 pixels).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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

    def matrix(self, generator: torch.Generator, size: tuple[int, int]) -> torch.Tensor:
        eye = torch.eye(3, dtype=torch.float64)
        if self.kind == "pad":  # show the image smaller inside a border of `amount` pixels
            factor = (max(size) + 2 * float(self.amount)) / max(size)
            eye[0, 0] = eye[1, 1] = factor
        elif self.kind == "jitter":
            d = int(self.amount)
            shift = torch.randint(-d, d + 1, (2,), generator=generator).double()
            eye[0, 2], eye[1, 2] = shift[0], shift[1]
        elif self.kind == "scale":
            eye[0, 0] = eye[1, 1] = 1.0 / _choice(self.amount, generator)
        elif self.kind == "rotate":
            angle = math.radians(_choice(self.amount, generator))
            c, s = math.cos(angle), math.sin(angle)
            eye[:2, :2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
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


class Transforms:
    """A chain of random affine pieces applied with one resampling; `Transforms([])` is the identity."""

    def __init__(self, pieces: Sequence[Transform] = (), *, fill: float = 0.5):
        self.pieces = tuple(pieces)
        self.fill = fill

    def matrices(self, generators: Sequence[torch.Generator], size: tuple[int, int]) -> torch.Tensor:
        """(B, 2, 3) `affine_grid` thetas, item i's pieces drawn from generator i in chain order."""
        height, width = size
        # centred pixel coordinates <-> affine_grid's normalized coordinates (align_corners=False)
        to_pixels = torch.diag(torch.tensor([width / 2.0, height / 2.0, 1.0], dtype=torch.float64))
        to_norm = torch.diag(torch.tensor([2.0 / width, 2.0 / height, 1.0], dtype=torch.float64))
        thetas = []
        for g in generators:
            m = torch.eye(3, dtype=torch.float64)
            for piece in self.pieces:  # output -> input: the first piece applied is the leftmost factor
                m = m @ piece.matrix(g, size)
            thetas.append((to_norm @ m @ to_pixels)[:2])
        return torch.stack(thetas)

    def __call__(self, pixels: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W) transformed, item i with generator i."""
        if not self.pieces:
            return pixels
        theta = self.matrices(generators, tuple(pixels.shape[-2:])).to(pixels.device, pixels.dtype)
        grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
        shifted = pixels - self.fill
        return F.grid_sample(shifted, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + self.fill

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
