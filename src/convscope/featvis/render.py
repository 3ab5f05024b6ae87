"""`render`: the one entry point of feature visualization.

    vis = render(model, channel("features.6", range(32)), steps=256)   # 32 channels, one batched optimization

Three parts: the objective (what to maximize), the parameterization (`param`, `init`, `decorrelate`: what is
optimized) and the `Schedule` (how: steps, update rule, transforms, regularizers, octaves, tiles, chunks, seed; its
fields are keywords of `render` too). `precision=` says what arithmetic the network runs in.

The network is a frozen working copy of the model (`hooks.frozen`: the user's model is never touched) that the
engine (`convscope.accel`) may run faster after one probe pass: BatchNorm folded, unread Inception branches skipped,
the image-facing strided convolution's input gradient computed phase by phase, channels-last inputs, and bf16 autocast under `precision="bf16"` (or "auto" where bf16 is faster). The forward pass
stops at the deepest layer the objective needs (`hooks.capture(..., stop=True)`); no weight gradient is computed.
The loop itself is `_optimize.optimize`.

Reproducible: item i's randomness (starting noise, transforms) comes from its own `torch.Generator` seeded from
(`seed`, i), never from global state, so the same seed gives the same image bit for bit on the CPU, and an item
renders the same whether its units are rendered in one batch or in chunks.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .. import hooks
from ..accel import Precision, Resolved, accelerated, check_precision, choose_precision
from ..errors import ConvscopeError, InputShapeError
from ..models import ModelSpec, load
from ..results import Recipe
from ._loop import _objective_grad, _Runner  # noqa: F401  (re-exported for tests and callers)
from ._optimize import Chunk, chunk_size, item_generators, optimize, resize
from .objectives import OUTPUT, Objective, as_objective
from .params import Parameterization
from .regularizers import Penalty, Projection
from .result import Visualization
from .schedule import Schedule, octave_sizes, parse_bytes
from .steps import PIXELS_ONLY
from .transforms import Transform, Transforms, standard_transforms

__all__ = ["render", "Schedule", "item_generators", "octave_sizes", "parse_bytes"]

Init = Literal["noise", "grey"] | torch.Tensor | str | Path | None
SMALL = 64  # below this image size, "auto" means pixels and no transforms
_resize = resize  # the name classic.py uses


def _size(size: int | Sequence[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if size is None:
        return tuple(default)  # type: ignore[return-value]
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise InputShapeError(f"size must be an int or (height, width), got {size!r}")
    return (int(size[0]), int(size[1]))


def _init_pixels(init: Init, spec: ModelSpec) -> torch.Tensor | str:
    """'noise' / 'grey' / pixels (B or 1, C, H, W) in [0, 1] at their own size."""
    if init is None or (isinstance(init, str) and init == "noise"):
        return "noise"
    if isinstance(init, str) and init in ("grey", "gray"):
        return "grey"
    if isinstance(init, (str, Path)):
        from ..data.images import load_image

        return load_image(init, channels=spec.channels).unsqueeze(0)
    if isinstance(init, torch.Tensor):
        return spec.batch(init, "init image").clamp(0, 1)
    raise TypeError(f"init must be None, 'noise', 'grey', a tensor or an image path, got {type(init).__name__}")


def _transforms(value: Any, size: tuple[int, int]) -> Transforms:
    if value is None or value is False or value == "none":
        return Transforms([])
    if isinstance(value, str) and value == "standard":
        return standard_transforms(size)
    if isinstance(value, Transforms):
        return value
    if isinstance(value, Transform):
        return Transforms([value])
    if isinstance(value, Sequence) and all(isinstance(v, Transform) for v in value):
        return Transforms(value)
    raise TypeError(f"transforms must be 'standard', None, a Transforms or a list of Transform, got {value!r}")


def _regularizers(plan: Schedule) -> tuple[list[Penalty], list[Projection]]:
    regs = list(plan.regularizers)
    bad = [r for r in regs if not isinstance(r, (Penalty, Projection))]
    if bad:
        raise TypeError(f"regularizers must be Penalty or Projection objects, got {bad[0]!r}")
    return [r for r in regs if isinstance(r, Penalty)], [r for r in regs if isinstance(r, Projection)]


def render(
    model: ModelSpec | nn.Module | str,
    objective: Objective | str,
    param: Literal["auto", "fourier", "pixel"] | Parameterization = "auto",
    *,
    init: Init = None,
    decorrelate: bool = True,
    schedule: Schedule | None = None,
    precision: Precision = "auto",
    progress: Callable[[int, int], None] | None = None,
    **options: Any,
) -> Visualization:
    """Synthesize images that maximize `objective` in `model`.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string (`convscope.models.load`).
        objective: an `Objective` (`channel`, `neuron`, `layer`, `class_logit`, `direction`, `diversity`, sums;
            layers as paths, modules of the model or `Layer`s) or a unit string (`"features.6:12"`). A batched
            objective (`channel(l, range(64))`) renders one image per unit.
        param: `"fourier"` (1/f spectrum, decorrelated colour, sigmoid), `"pixel"` (pixels clipped to [0, 1]), a
            `Parameterization` module (its batch size is used), or `"auto"` (default): Fourier for images of at
            least `SMALL` (64) pixels, pixels below (MNIST-size images: the Fourier basis and its sigmoid hold
            dark-loving units back there, and the result is less true).
        init: None/"noise" (seeded), "grey", pixels (C, H, W) / (B, C, H, W) in [0, 1], or an image path.
        decorrelate: colour decorrelation of the Fourier parameterization (3-channel models).
        schedule: a `Schedule` (steps, optimizer, lr, transforms, regularizers, size, octaves, outscale, tile,
            batch, memory_budget, seed, fuse, ...); `**options` replace its fields (`octaves=3, seed=0`).
        precision: `"auto"` (default: bf16 where a few timed passes of this network at this batch and size find it
            faster, see `convscope.accel.precision`), `"float32"` or `"bf16"`: the network runs under bf16
            autocast with channels-last inputs; the parameterization, transforms, regularizers and optimizer state
            stay float32, and `values` and `start_values` come from float32 passes. The recipe records what ran.
        progress: called as `progress(done, total)` after every step (`done` counts steps x items).

    Returns:
        a `Visualization` (images (B, C, H, W) in [0, 1], values and start values (B,), trace (steps, B), dead
        items, labels, recipe).
    """
    spec = model if isinstance(model, ModelSpec) else load(model)
    plan = (schedule or Schedule()).with_options(**options)
    objective = as_objective(objective).bind(spec)
    pixels_init = _init_pixels(init, spec)
    size = plan.size
    if size is None and isinstance(pixels_init, torch.Tensor):
        size = tuple(pixels_init.shape[-2:])
    if isinstance(param, Parameterization):
        size = size or tuple(param.shape[-2:])
    size = _size(size, spec.input_size)
    sizes = octave_sizes(size, plan.octaves, plan.outscale)
    if len(sizes) > plan.octaves:  # octaves == 1 with outscale: optimize at the final size
        sizes = sizes[-1:]
    penalties, projections = _regularizers(plan)
    small = min(sizes[0]) < SMALL
    if isinstance(param, str) and param == "auto":
        param = "pixel" if small else "fourier"
    transforms = plan.transforms
    if isinstance(transforms, str) and transforms == "auto":
        transforms = None if small else "standard"
    pixel_space = param == "pixel" or (isinstance(param, Parameterization) and param.pixel_space)
    if (projections or plan.optimizer in PIXELS_ONLY) and not pixel_space:
        what = f"optimizer {plan.optimizer!r}" if plan.optimizer in PIXELS_ONLY else type(projections[0]).__name__
        raise ConvscopeError(f"{what} acts on pixels: use param='pixel'")
    chain = _transforms(transforms, sizes[0])
    n = param.shape[0] if isinstance(param, Parameterization) else objective.batch or plan.batch or 1
    if objective.batch is not None and objective.batch != n:
        raise ConvscopeError(f"the objective renders {objective.batch} units but the parameterization has {n} items")
    if isinstance(pixels_init, torch.Tensor) and pixels_init.shape[0] not in (1, n):
        raise InputShapeError(f"init has {pixels_init.shape[0]} images for {n} items")
    check_precision(precision)  # a bad choice fails before any work
    center = torch.tensor(spec.mean or (0.5,) * spec.channels, device=spec.device, dtype=spec.dtype).view(1, -1, 1, 1)
    layers = [name for name in objective.layers if name != OUTPUT]
    stop = OUTPUT not in objective.layers
    total = plan.steps * len(sizes) * n
    done = [0]

    def tick(k: int, per: int = 1) -> None:
        done[0] += k * per
        if progress is not None:
            progress(done[0], total)

    options_ = {"levels": plan.levels} if plan.optimizer == "laplacian" else {}
    chunk_plan = Chunk(param=param, sizes=sizes, steps=plan.steps, optimizer=plan.optimizer, lr=plan.lr,
                       transforms=chain, penalties=penalties, projections=projections, init=pixels_init,
                       seed=plan.seed, decorrelate=decorrelate, tile=plan.tile, center=center,
                       options={**options_, **(plan.optimizer_options or {})})
    pixels = torch.rand((1, spec.channels, *sizes[0]), generator=torch.Generator().manual_seed(0))
    probe_x = spec.normalize(pixels.to(spec.device, spec.dtype))
    with hooks.frozen(spec) as work, contextlib.ExitStack() as stack:
        net = work.module
        applied = stack.enter_context(accelerated(net, probe_x, layers, {name: objective.channels(name)
                                                                          for name in layers},
                                                  stop=stop, fuse=plan.fuse))
        objective.check(applied.shapes())
        cap = stack.enter_context(hooks.capture(net, layers, detach=False, stop=stop))
        run = _Runner(work, objective, cap, "float32")
        chunk = n if isinstance(param, Parameterization) else chunk_size(
            run, objective, n, parse_bytes(plan.memory_budget), sizes[-1], plan.batch if objective.batch else None)
        sample = objective.take(list(range(chunk))) if objective.batch else objective
        trial_x = torch.rand((chunk, spec.channels, *sizes[0]), generator=torch.Generator().manual_seed(1))

        def trial(choice: Resolved) -> None:  # one step's network work, for precision="auto" to time
            x = trial_x.to(spec.device, spec.dtype).requires_grad_(True)
            torch.autograd.grad(run.values(sample, x, choice).sum(), x)

        run.precision = ran = choose_precision(precision, net, trial, (tuple(trial_x.shape), tuple(layers), stop),
                                               spec.device, spec.dtype, work=applied.probe.macs(net) * chunk)
        images, starts, traces = [], [], []
        for first in range(0, n, chunk):
            items = list(range(first, min(n, first + chunk)))
            sub = objective.take(items) if objective.batch else objective
            img, start, trace = optimize(run, sub, items, chunk_plan, tick=lambda k, m=len(items): tick(k, m))
            images.append(img)
            starts.append(start)
            traces.append(trace)
        images_t = torch.cat(images)
        with torch.no_grad():  # the final values: float32, whatever the render ran in
            values = torch.cat([run.values(objective.take(list(range(f, min(n, f + chunk)))) if objective.batch
                                           else objective, images_t[f : f + chunk], "float32")
                                for f in range(0, n, chunk)])
    start_values = torch.cat(starts).cpu().float()
    values = values.detach().cpu().float()
    trace_t = torch.cat(traces, dim=1)
    dead = [i for i in range(n) if start_values[i] == 0 and values[i] == 0 and bool((trace_t[:, i] == 0).all())]
    images_t = images_t.cpu().float()
    if dead:
        images_t[dead] = 0.5
    recipe = Recipe(
        kind="render",
        model=spec.describe(),
        params={
            "objective": str(objective), "param": param if isinstance(param, str) else type(param).__name__,
            "size": list(size), "octave_sizes": [list(s) for s in sizes], "steps": plan.steps,
            "optimizer": plan.optimizer, "lr": plan.lr, "transforms": chain.describe(),
            "regularizers": [repr(r) for r in plan.regularizers], "octaves": plan.octaves, "outscale": plan.outscale,
            "decorrelate": decorrelate, "levels": plan.levels, "optimizer_options": dict(plan.optimizer_options or {}),
            "init": init if isinstance(init, (str, type(None))) else str(init) if isinstance(init, Path)
            else f"tensor{tuple(init.shape)}", "seed": plan.seed, "batch": n, "chunk": chunk, "tile": plan.tile,
            "precision": ran, "precision_asked": precision, "fused_batchnorms": applied.fused, "pruned_layers": list(applied.pruned),
            "phase_split_convs": list(applied.kernels),
        },
    )
    return Visualization(images=images_t, values=values, start_values=start_values, trace=trace_t, dead=dead,
                         labels=objective.labels(n), recipe=recipe)
