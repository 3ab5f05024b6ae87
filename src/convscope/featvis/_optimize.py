"""The render loop for one chunk of items, and the chunk size a memory budget allows.

Each step: parameterization -> pixels in [0, 1] -> random transforms (per item, seeded) -> the network (the
`_Runner`: the model's normalization, the frozen working copy up to the objective's layers, in the render's
precision) -> objective (B,) -> gradient -> penalties -> update rule -> projections. Octaves continue the
optimization at growing sizes. Everything but the network runs in float32 (the model's dtype).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import hooks
from ..errors import NonFiniteError
from ._loop import _asleep, _objective_grad, _Runner
from ._redirect import RedirectedReLU
from .objectives import Objective
from .params import Parameterization, make_param
from .regularizers import Penalty, Projection
from .steps import make_step
from .transforms import Transforms

__all__ = ["Chunk", "optimize", "chunk_size", "item_generators", "resize"]

REDIRECT_STEPS = 32  # redirected ReLU gradients wake zero units during the first steps; later zero units are dead


def item_generators(seed: int, items: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per item, seeded from (`seed`, item index), independent of how items are batched."""
    return [torch.Generator().manual_seed((int(seed) * 1_000_003 + int(i) * 7_919 + 12_345) % 2**63) for i in items]


def resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, C, h, w) pixels -> (B, C, H, W), bilinear (antialiased when shrinking), clipped to [0, 1]."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    antialias = pixels.shape[-2] > size[0] or pixels.shape[-1] > size[1]
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=antialias).clamp(0, 1)


@dataclass(frozen=True)
class Chunk:
    """What one chunk of the optimization needs besides the runner and its objective."""

    param: str | Parameterization
    sizes: list[tuple[int, int]]
    steps: int
    optimizer: str
    lr: float | None
    transforms: Transforms
    penalties: list[Penalty]
    projections: list[Projection]
    init: torch.Tensor | str
    seed: int
    decorrelate: bool
    tile: int | None
    center: torch.Tensor
    options: dict[str, Any]


def _start(run: _Runner, plan: Chunk, base: torch.Tensor | str, gens: list[torch.Generator]) -> Parameterization:
    spec = run.spec
    first = base if isinstance(base, str) else resize(base, plan.sizes[0]).to(spec.device, spec.dtype)
    if isinstance(plan.param, Parameterization):
        module = plan.param.to(spec.device)
        if not isinstance(first, str):
            module.set_pixels(first)
        return module
    return make_param(plan.param, gens, spec.channels, plan.sizes[0], init=first, decorrelate=plan.decorrelate,
                      dtype=spec.dtype, device=spec.device)


def optimize(run: _Runner, objective: Objective, items: list[int], plan: Chunk,
             tick: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimize one chunk of items; returns (pixels (B, C, H, W), start values (B,), trace (steps, B)).

    Start values come from a float32 pass; the trace holds the values the optimizer saw, in the run's precision."""
    gens = item_generators(plan.seed, items)
    roll = torch.Generator().manual_seed(int(plan.seed) + 99_991)
    init = plan.init
    base = init if isinstance(init, str) else init[items] if init.shape[0] > 1 else init.expand(len(items), -1, -1, -1)
    module = _start(run, plan, base, gens)
    with torch.no_grad():
        start = run.values(objective, module(), "float32").detach()
    asleep = _asleep(start)
    trace = []
    for k, size in enumerate(plan.sizes):
        if k > 0:
            previous = module().detach()
            module = module.resized(size)
            if not isinstance(base, str):  # keep the photo's own detail at every octave (DeepDream)
                lower = resize(base, plan.sizes[k - 1]).to(previous)
                module.set_pixels(resize(base, size).to(previous) + resize(previous - lower + 0.5, size) - 0.5)
        params = [p for p in module.parameters() if p.requires_grad]
        step = make_step(plan.optimizer, params, plan.lr, **plan.options)
        for t in range(plan.steps):
            pixels = module()
            if not torch.isfinite(pixels).all():
                raise NonFiniteError(f"the image became non-finite at step {t} (lower the learning rate)")
            x = plan.transforms(pixels, gens)
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            # units at exactly zero have no gradient through their ReLUs: redirect it until they wake up
            with hooks.function_mode(RedirectedReLU(asleep)) if asleep.numel() else contextlib.nullcontext():
                values, gx = _objective_grad(run, objective, x, plan.tile, roll)
            asleep = _asleep(values) if t + 1 < REDIRECT_STEPS and k == 0 else _asleep(values[:0])
            surrogate = -(x * gx).sum()  # d/dparams = -(dx/dparams)^T gx: backprop through transforms and param
            for penalty in plan.penalties:
                surrogate = surrogate + penalty(pixels, plan.center).sum()
            grads = torch.autograd.grad(surrogate, params)
            step(grads)
            module.project_()
            if plan.projections:
                with torch.no_grad():
                    px = module.pixels
                    ascent = -grads[0]
                    new = px
                    for projection in plan.projections:
                        new = projection(new, ascent, t, plan.center)
                    px.copy_(new.clamp(0, 1))
            trace.append(values.to("cpu", torch.float32))
            tick(1)
    return module().detach(), start, torch.stack(trace) if trace else torch.zeros(0, len(items))


def chunk_size(run: _Runner, objective: Objective, n: int, budget: int | None, size: tuple[int, int],
               batch: int | None) -> int:
    """Items per optimization: all of them, `batch`, or as many as `budget` bytes of saved activations allow."""
    if objective.couples_batch:
        return n
    if batch is not None:
        return max(1, min(batch, n))
    if budget is None or n == 1:
        return n
    # probe: bytes autograd saves per item, from the difference between a 2-item and a 1-item pass
    used = []
    for b in (1, 2):
        x = torch.full((b, run.spec.channels, *size), 0.5, device=run.spec.device, dtype=run.spec.dtype,
                       requires_grad=True)
        with hooks.saved_tensor_bytes() as counter:
            values = run.values(objective.take([0] * b) if objective.batch else objective, x)
            torch.autograd.grad(values.sum(), x)
        used.append(counter.bytes)
    per_item = max(1, used[1] - used[0]) * 3  # activations + their gradients + the transformed copies
    return max(1, min(n, budget // per_item))
