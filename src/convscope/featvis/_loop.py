"""One step's forward and backward: the frozen working copy run up to the objective's layers, whole or tile by tile,
in the render's precision (bf16 autocast or float32); activations come back in the model's dtype (float32), so the
objective, the gradient handed to the parameterization and everything after it stay float32."""

from __future__ import annotations

import math

import torch

from .. import hooks
from ..accel import Resolved, network_precision
from ..models import ModelSpec
from .objectives import OUTPUT, Objective

__all__ = ["_Runner", "_objective_grad", "_asleep", "_tiles"]


class _Runner:
    """Runs the frozen working copy (`spec.module`, captured by `cap`) up to the objective's layers in `precision`
    and returns `{layer: activation}` in the model's dtype."""

    def __init__(self, spec: ModelSpec, objective: Objective, cap: hooks.Capture, precision: Resolved = "float32"):
        self.spec, self.objective, self.cap, self.precision = spec, objective, cap, precision
        self.needs_output = OUTPUT in objective.layers

    def acts(self, pixels: torch.Tensor, precision: Resolved | None = None) -> dict[str, torch.Tensor]:
        x = self.spec.normalize(pixels)
        if x.ndim == 4:  # oneDNN's channels-last kernels (conv, pooling) are much faster on CPU; values unchanged
            x = x.contiguous(memory_format=torch.channels_last)
        with network_precision(precision or self.precision, x.device):
            out = self.cap.run(x)
            acts = dict(self.cap.activations) if self.cap.requested else {}
        if self.needs_output:
            acts[OUTPUT] = out
        dtype = self.spec.dtype
        return {k: v.to(dtype) if v.is_floating_point() and v.dtype != dtype else v for k, v in acts.items()}

    def values(self, objective: Objective, pixels: torch.Tensor, precision: Resolved | None = None) -> torch.Tensor:
        """(B,) objective values of `pixels` (B, C, H, W) in `precision` (default: the runner's)."""
        return objective(self.acts(pixels, precision))


def _tiles(length: int, tile: int) -> list[int]:
    if length <= tile:
        return [0]
    n = math.ceil(length / tile)
    return [round(k * (length - tile) / (n - 1)) for k in range(n)]


def _objective_grad(run: _Runner, objective: Objective, x: torch.Tensor, tile: int | None,
                    roll: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (B,), d sum(values) / d x) for the transformed pixels `x`, tile by tile when `x` exceeds `tile`."""
    height, width = x.shape[-2:]
    if tile is None or (height <= tile and width <= tile):
        values = run.values(objective, x)
        (grad,) = torch.autograd.grad(values.sum(), x)
        return values.detach(), grad
    # DeepDream: roll by a random offset so tile seams move every step, sum the tiles' objectives
    dy, dx = (int(v) for v in torch.randint(0, 1 << 30, (2,), generator=roll))
    dy, dx = dy % height, dx % width
    rolled = torch.roll(x.detach(), (dy, dx), (2, 3))
    grad = torch.zeros_like(rolled)
    values = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for top in _tiles(height, tile):
        for left in _tiles(width, tile):
            piece = rolled[..., top : top + tile, left : left + tile].requires_grad_(True)
            v = run.values(objective, piece)
            (g,) = torch.autograd.grad(v.sum(), piece)
            grad[..., top : top + tile, left : left + tile] += g
            values += v.detach()
    return values, torch.roll(grad, (-dy, -dx), (2, 3))


def _asleep(values: torch.Tensor) -> torch.Tensor:
    """Indices of the items whose objective is exactly zero (no gradient through their ReLUs)."""
    return torch.nonzero(values == 0).flatten().cpu()
