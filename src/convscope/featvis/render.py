"""`render`: the one entry point of feature visualization.

    vis = render(model, channel("features.6", range(32)), steps=256)   # 32 channels, one batched optimization

Each step: parameterization -> pixels in [0, 1] -> random transforms (per item, seeded) -> the model's
normalization -> forward pass up to the deepest layer the objective needs (`hooks.capture(..., stop=True)`, under
`hooks.frozen`, so no weight gradient is ever computed) -> objective (B,) minus penalties -> gradient -> update
rule -> projections. Octaves continue the optimization at growing sizes; tiles let images larger than the
network's input be optimized piece by piece.

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
import torch.nn.functional as F
from torch import nn

from .. import hooks
from ..errors import ConvscopeError, InputShapeError, NonFiniteError
from ..models import ModelSpec, load
from ..results import Recipe
from .._fold import folded
from ._engine import engine
from ._pools import fast_pools
from ._prune import pruned
from ._loop import _asleep, _objective_grad, _Runner
from ._redirect import RedirectedReLU
from .objectives import OUTPUT, Objective, as_objective
from .params import Parameterization, make_param
from .regularizers import Penalty, Projection
from .result import Visualization
from .steps import PIXELS_ONLY, make_step
from .transforms import Transform, Transforms, standard_transforms

__all__ = ["render", "item_generators", "octave_sizes", "parse_bytes"]

Init = Literal["noise", "grey"] | torch.Tensor | str | Path | None
SMALL = 64  # below this image size, "auto" means pixels and no transforms
REDIRECT_STEPS = 32  # redirected ReLU gradients wake zero units during the first steps; later zero units are dead


def item_generators(seed: int, items: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per item, seeded from (`seed`, item index), independent of how items are batched."""
    return [torch.Generator().manual_seed((int(seed) * 1_000_003 + int(i) * 7_919 + 12_345) % 2**63) for i in items]


def octave_sizes(size: tuple[int, int], octaves: int, outscale: float, octave_scale: float = 1.4) -> list[tuple[int, int]]:
    """Sizes of the octaves: from `size` to `size * outscale` geometrically when `outscale > 1`; otherwise ending
    at `size`, each octave `octave_scale` times the previous one (DeepDream)."""
    if octaves < 1:
        raise ConvscopeError(f"octaves must be >= 1, got {octaves}")
    final = (max(1, round(size[0] * outscale)), max(1, round(size[1] * outscale)))
    if octaves == 1:
        return [size] if outscale == 1 else [size, final]
    if outscale > 1:
        factors = [outscale ** (k / (octaves - 1)) for k in range(octaves)]
        return [(max(1, round(size[0] * f)), max(1, round(size[1] * f))) for f in factors]
    factors = [octave_scale ** -(octaves - 1 - k) for k in range(octaves)]
    return [(max(1, round(final[0] * f)), max(1, round(final[1] * f))) for f in factors]


def parse_bytes(budget: int | float | str | None) -> int | None:
    """`2_000_000_000`, `"512MB"`, `"2GB"`, `"1.5GiB"` -> bytes."""
    if budget is None or isinstance(budget, (int, float)):
        return None if budget is None else int(budget)
    text = budget.strip().upper().replace("IB", "B")
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ConvscopeError(f"memory budget {budget!r}: write bytes or a size like '512MB' or '2GB'")


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


def _resize(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    antialias = pixels.shape[-2] > size[0] or pixels.shape[-1] > size[1]
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=antialias).clamp(0, 1)


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


def _optimize(run: _Runner, objective: Objective, items: list[int], *, param: str | Parameterization,
              sizes: list[tuple[int, int]], steps: int, optimizer: str, lr: float | None,
              transforms: Transforms, penalties: list[Penalty], projections: list[Projection],
              init: torch.Tensor | str, seed: int, decorrelate: bool, tile: int | None, center: torch.Tensor,
              levels: int, optimizer_options: dict[str, Any] | None,
              tick: Callable[[int], None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimize one chunk of items; returns (pixels (B, C, H, W), start values (B,), trace (steps, B))."""
    spec = run.spec
    gens = item_generators(seed, items)
    roll = torch.Generator().manual_seed(int(seed) + 99_991)
    base = init if isinstance(init, str) else init[items] if init.shape[0] > 1 else init.expand(len(items), -1, -1, -1)
    first = base if isinstance(base, str) else _resize(base, sizes[0]).to(spec.device, spec.dtype)
    if isinstance(param, Parameterization):
        module = param.to(spec.device)
        if not isinstance(first, str):
            module.set_pixels(first)
    else:
        module = make_param(param, gens, spec.channels, sizes[0], init=first, decorrelate=decorrelate,
                            dtype=spec.dtype, device=spec.device)
    with torch.no_grad():
        start = run.values(objective, module()).detach()
    asleep = _asleep(start)
    trace = []
    for k, size in enumerate(sizes):
        if k > 0:
            previous = module().detach()
            module = module.resized(size)
            if not isinstance(base, str):  # keep the photo's own detail at every octave (DeepDream)
                lower = _resize(base, sizes[k - 1]).to(previous)
                module.set_pixels(_resize(base, size).to(previous) + _resize(previous - lower + 0.5, size) - 0.5)
        params = [p for p in module.parameters() if p.requires_grad]
        options = {"levels": levels} if optimizer == "laplacian" else {}
        step = make_step(optimizer, params, lr, **options, **(optimizer_options or {}))
        for t in range(steps):
            pixels = module()
            if not torch.isfinite(pixels).all():
                raise NonFiniteError(f"the image became non-finite at step {t} (lower the learning rate)")
            x = transforms(pixels, gens)
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            # units at exactly zero have no gradient through their ReLUs: redirect it until they wake up
            with hooks.function_mode(RedirectedReLU(asleep)) if asleep.numel() else contextlib.nullcontext():
                values, gx = _objective_grad(run, objective, x, tile, roll)
            asleep = _asleep(values) if t + 1 < REDIRECT_STEPS and k == 0 else _asleep(values[:0])
            surrogate = -(x * gx).sum()  # d/dparams = -(dx/dparams)^T gx: backprop through transforms and param
            for penalty in penalties:
                surrogate = surrogate + penalty(pixels, center).sum()
            grads = torch.autograd.grad(surrogate, params)
            step(grads)
            module.project_()
            if projections:
                with torch.no_grad():
                    px = module.pixels
                    ascent = -grads[0]
                    new = px
                    for projection in projections:
                        new = projection(new, ascent, t, center)
                    px.copy_(new.clamp(0, 1))
            trace.append(values.to("cpu", torch.float32))
            tick(1)
    return module().detach(), start, torch.stack(trace) if trace else torch.zeros(0, len(items))


def _chunk_size(run: _Runner, objective: Objective, n: int, budget: int | None, size: tuple[int, int],
                batch: int | None, transforms: Transforms) -> int:
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


def render(
    model: ModelSpec | nn.Module | str,
    objective: Objective | str,
    *,
    param: Literal["auto", "fourier", "pixel"] | Parameterization = "auto",
    size: int | tuple[int, int] | None = None,
    steps: int = 256,
    optimizer: Literal["adam", "ascent", "laplacian", "smooth"] = "adam",
    lr: float | None = None,
    transforms: Literal["auto", "standard"] | Transforms | Sequence[Transform] | None = "auto",
    regularizers: Sequence[Penalty | Projection] = (),
    octaves: int = 1,
    outscale: float = 1.0,
    init: Init = None,
    seed: int = 0,
    batch: int | None = None,
    memory_budget: int | str | None = None,
    tile: int | None = None,
    decorrelate: bool = True,
    levels: int = 4,
    optimizer_options: dict[str, Any] | None = None,
    fuse: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Visualization:
    """Synthesize images that maximize `objective` in `model`.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string (`convscope.models.load`).
        objective: an `Objective` (`channel`, `neuron`, `layer`, `class_logit`, `direction`, `diversity`, sums)
            or a unit string (`"features.6:12"`). A batched objective (`channel(l, range(64))`) renders one image
            per unit.
        param: `"fourier"` (1/f spectrum, decorrelated colour, sigmoid), `"pixel"` (pixels clipped to [0, 1]), a
            `Parameterization` module (its batch size is used), or `"auto"` (default): Fourier for images of at
            least `SMALL` (64) pixels, pixels below (MNIST-size images: the Fourier basis and its sigmoid hold
            dark-loving units back there, and the result is less true).
        size: (H, W) or an int; default the model's input size, or the size of an `init` image.
        steps: steps per octave.
        optimizer: `"adam"`, `"ascent"` (max-abs normalized gradient), `"laplacian"` (DeepDream, `levels` bands)
            or `"smooth"`; the last two need `param="pixel"`. `lr`: step size (None: the rule's default).
        transforms: random jitter/scale/rotate per step (`"standard"` = Lucid's chain; None for none; `"auto"`
            (default): standard from `SMALL` pixels up, none below, where a few pixels of jitter are a large move).
        regularizers: penalties (`L1`, `L2`, `TotalVariation`, `EdgePenalty`, `ColorPenalty`, `sharpness(s)`) and
            projections (`ClipRange`, `Decay`, `Blur`, `ClipNorm`, `ClipContribution`; pixel param only).
        octaves, outscale: optimize at `octaves` growing sizes, ending at `size * outscale` (see `octave_sizes`).
        init: None/"noise" (seeded), "grey", pixels (C, H, W) / (B, C, H, W) in [0, 1], or an image path.
        seed: every random draw comes from generators seeded by (seed, item).
        batch: images per optimization: a batched objective's units are rendered in chunks of `batch`
            (default: all at once, or as many as `memory_budget` allows); a plain objective gives `batch` images.
        memory_budget: bytes (or "2GB") the optimization may use for activations; sets the chunk size from a
            probe pass.
        tile: optimize images larger than `tile` pixels tile by tile (the objective becomes the sum over tiles).
        decorrelate: colour decorrelation of the Fourier parameterization (3-channel models).
        levels: Laplacian pyramid levels of the "laplacian" optimizer.
        optimizer_options: more options of the update rule, e.g. `{"widths": (0.5, 1, 2), "rounds": 2}` for
            "smooth" (blur widths in pixels, recursive rounds).
        fuse: run the frozen network faster for the render, on copies of its modules (the model itself is untouched;
            the same function up to float rounding): eval-mode BatchNorm folded into the preceding convolutions
            (checked on a probe), 1x1 convolutions through oneDNN, the image-facing strided convolution's input
            gradient computed phase by phase (see `_engine`), max-pools that reuse their memory and mask the
            gradient of the ReLU before them on the pooled tensor (see `_pools`), and the branches of a
            concatenating layer (Inception) that the objective's channels do not come from skipped (see `_prune`).
        progress: called as `progress(done, total)` after every step (`done` counts steps x items).

    Returns:
        a `Visualization` (images (B, C, H, W) in [0, 1], values and start values (B,), trace (steps, B), dead
        items, labels, recipe).
    """
    spec = model if isinstance(model, ModelSpec) else load(model)
    objective = as_objective(objective).bind(spec)
    if steps < 0:
        raise ConvscopeError(f"steps must be >= 0, got {steps}")
    pixels_init = _init_pixels(init, spec)
    if size is None and isinstance(pixels_init, torch.Tensor):
        size = tuple(pixels_init.shape[-2:])
    if isinstance(param, Parameterization):
        size = size or tuple(param.shape[-2:])
    size = _size(size, spec.input_size)
    sizes = octave_sizes(size, octaves, outscale)
    if len(sizes) > octaves:  # octaves == 1 with outscale: optimize at the final size
        sizes = sizes[-1:]
    regs = list(regularizers)
    bad = [r for r in regs if not isinstance(r, (Penalty, Projection))]
    if bad:
        raise TypeError(f"regularizers must be Penalty or Projection objects, got {bad[0]!r}")
    penalties = [r for r in regs if isinstance(r, Penalty)]
    projections = [r for r in regs if isinstance(r, Projection)]
    small = min(sizes[0]) < SMALL
    if isinstance(param, str) and param == "auto":
        param = "pixel" if small else "fourier"
    if isinstance(transforms, str) and transforms == "auto":
        transforms = None if small else "standard"
    pixel_space = param == "pixel" or (isinstance(param, Parameterization) and param.pixel_space)
    if (projections or optimizer in PIXELS_ONLY) and not pixel_space:
        what = f"optimizer {optimizer!r}" if optimizer in PIXELS_ONLY else f"{type(projections[0]).__name__}"
        raise ConvscopeError(f"{what} acts on pixels: use param='pixel'")
    chain = _transforms(transforms, sizes[0])
    if isinstance(param, Parameterization):
        n = param.shape[0]
    else:
        n = objective.batch or batch or 1
    if objective.batch is not None and objective.batch != n:
        raise ConvscopeError(f"the objective renders {objective.batch} units but the parameterization has {n} items")
    if isinstance(pixels_init, torch.Tensor) and pixels_init.shape[0] not in (1, n):
        raise InputShapeError(f"init has {pixels_init.shape[0]} images for {n} items")
    center = torch.tensor(spec.mean or (0.5,) * spec.channels, device=spec.device, dtype=spec.dtype).view(1, -1, 1, 1)
    layers = [name for name in objective.layers if name != OUTPUT]
    module = spec.module
    total = steps * len(sizes) * n
    done = [0]

    def tick(k: int, per: int = 1) -> None:
        done[0] += k * per
        if progress is not None:
            progress(done[0], total)

    with contextlib.ExitStack() as stack:
        stack.enter_context(hooks.frozen(module))
        probe = spec.example_input(1).new_full((1, spec.channels, *sizes[0]), 0.5)
        native = spec.example_input(1).fill_(0.5)  # fusion is size-independent: probe where the whole net runs
        # `fuse`: folded BatchNorms, faster convolutions, pruned branches, fast pools (each checked on a probe)
        fused, skipped, pooled = 0, [], []
        if fuse and not isinstance(module, torch.jit.ScriptModule):  # TorchScript allows no module swaps
            fused = stack.enter_context(folded(module, native, objective.layers))
            stack.enter_context(hooks.swap_modules(module, engine(module)))
            for name in layers:
                cut = pruned(module, name, objective.channels(name), native)
                stack.enter_context(hooks.swap_modules(module, cut))
                skipped += list(cut)
            image = torch.rand(probe.shape, generator=torch.Generator().manual_seed(0)).to(probe)
            fast = fast_pools(module, layers, image)
            stack.enter_context(hooks.swap_modules(module, fast))
            pooled = sorted(path for path, m in fast.items() if not isinstance(m, torch.nn.MaxPool2d))
        cap = stack.enter_context(hooks.capture(module, layers, detach=False, stop=OUTPUT not in objective.layers))
        run = _Runner(spec, objective, cap)
        with torch.no_grad():
            out = cap.run(probe)
            cap_acts = dict(cap.activations) if layers else {}
            shapes = {name: a.shape for name, a in cap_acts.items()}
            if OUTPUT in objective.layers:
                shapes[OUTPUT] = out.shape
            objective.check(shapes)
        chunk = n if isinstance(param, Parameterization) else _chunk_size(
            run, objective, n, parse_bytes(memory_budget), sizes[-1], batch if objective.batch else None, chain)
        images, starts, traces = [], [], []
        for first in range(0, n, chunk):
            items = list(range(first, min(n, first + chunk)))
            sub = objective.take(items) if objective.batch else objective
            img, start, trace = _optimize(
                run, sub, items, param=param, sizes=sizes, steps=steps, optimizer=optimizer, lr=lr,
                transforms=chain, penalties=penalties, projections=projections, init=pixels_init, seed=seed,
                decorrelate=decorrelate, tile=tile, center=center, levels=levels,
                optimizer_options=optimizer_options,
                tick=lambda k, m=len(items): tick(k, m))
            images.append(img)
            starts.append(start)
            traces.append(trace)
        images_t = torch.cat(images)
        with torch.no_grad():
            values = torch.cat([run.values(objective.take(list(range(f, min(n, f + chunk)))) if objective.batch
                                           else objective, images_t[f : f + chunk]) for f in range(0, n, chunk)])
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
            "size": list(size), "octave_sizes": [list(s) for s in sizes], "steps": steps, "optimizer": optimizer,
            "lr": lr, "transforms": chain.describe(), "regularizers": [repr(r) for r in regs],
            "octaves": octaves, "outscale": outscale, "decorrelate": decorrelate, "levels": levels,
            "optimizer_options": optimizer_options or {},
            "init": init if isinstance(init, (str, type(None))) else str(init) if isinstance(init, Path)
            else f"tensor{tuple(init.shape)}", "seed": seed, "batch": n, "chunk": chunk, "tile": tile,
            "fused_batchnorms": fused, "pruned_layers": skipped,
            "rectifiers_masked_by_pools": pooled,
        },
    )
    return Visualization(images=images_t, values=values, start_values=start_values, trace=trace_t, dead=dead,
                         labels=objective.labels(n), recipe=recipe)
