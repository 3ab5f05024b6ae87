"""Two classic recipes over `render`: class models (Simonyan et al. 2014) and DeepDream (Mordvintsev et al. 2015).

- `class_model(model, "goldfish")`: `argmax_I S_c(I) - lambda * ||I||` (L2 or L1, `lambda = weight`), S_c the
  pre-softmax class score, by gradient ascent on pixels from seeded noise or the mean image of the class.
- `dream(model, photo, layer="features.10")`: amplify what a layer sees in a photo: maximize the layer's L2 with
  Laplacian-pyramid normalized gradients over octaves (the photo's own detail is kept at every octave), random
  jitter, and tiles for photos larger than the network's input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import warnings

import torch
from torch import nn

from ..accel import Precision
from ..errors import DatasetError, OptionError
from ..layers import LayerLike
from ..models import ModelSpec, load
from .objectives import Objective, class_logit
from .objectives import layer as layer_l2
from .regularizers import L1, L2, Blur, Penalty, Projection
from .render import Init, render
from .result import Visualization
from .transforms import Transforms, jitter

__all__ = ["class_model", "class_mean", "dream"]


def class_mean(spec: ModelSpec, data: Any, target: int | str, *, limit: int = 512) -> torch.Tensor:
    """The mean image (1, C, H, W) in [0, 1] of up to `limit` images of class `target` in `data` (anything
    `convscope.data.resolve` accepts), at the model's input size."""
    from ..data import batches, resolve

    dataset = resolve(data)
    c = spec.class_index(target)
    labels = torch.as_tensor(dataset.labels)
    order = torch.nonzero(labels == c).flatten()[:limit].tolist()
    if not order:
        raise DatasetError(f"dataset {dataset.name!r} has no images of class {spec.class_name(c)!r} ({c})")
    total, count = None, 0
    for batch in batches(dataset, spec, 128, order=order):
        s = batch.pixels.sum(0, keepdim=True)
        total = s if total is None else total + s
        count += batch.pixels.shape[0]
    return total / count


def class_model(
    model: ModelSpec | nn.Module | str,
    target: int | str | Sequence[int | str],
    *,
    penalty: Literal["l2", "l1"] = "l2",
    weight: float | None = None,
    init: Init | Literal["mean"] = None,
    data: Any = None,
    steps: int = 256,
    param: Literal["auto", "fourier", "pixel"] = "auto",
    optimizer: Literal["adam", "ascent", "smooth"] = "adam",
    lr: float | None = None,
    transforms: Any = "default",
    blur: float | None = 0.5,
    size: int | tuple[int, int] | None = None,
    octaves: int = 1,
    outscale: float = 1.0,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    display: Literal["auto", "stretch", "none"] = "auto",
    precision: Precision = "auto",
) -> Visualization:
    """Simonyan et al.'s class model: the image maximizing the class score minus `weight * ||I - mean||^2`
    (or the L1 norm).

    Args:
        target: a class index or name (`"goldfish"`), or a list (one image per class, rendered in one batch).
        penalty, weight: `"l2"` (the paper; default weight 0.1) or `"l1"` (default 0.05), on pixels in [0, 1]
            relative to the model's mean pixel.
        init: None/"noise" (seeded), "grey", "mean" (the mean of the class's images in `data`), pixels or a path.
        param, optimizer: by default ("auto") the Fourier parameterization with Adam and Lucid's transforms, which make a
            readable picture of an ImageNet class; `param="pixel", optimizer="ascent", transforms=None` is the
            paper's plain gradient ascent on pixels (a faint, noisy image that scores as high). Below 64 pixels
            "auto" means pixels, as in `render`.
        transforms: "default" = Lucid's standard chain for Fourier, a small jitter for pixels; None for none;
            "standard" or a `Transforms` otherwise.
        blur: Gaussian blur of this width every 4 steps for the pixel parameterization (None for none).
        display: how `to_image`/`save` show the pixels (recorded in the recipe; `images` keep the raw pixels):
            "stretch" contrast-stretches each image around its mean (`render.core.normalize`), as Simonyan et al.
            display their class models; "auto" (default) stretches for the paper's `param="pixel",
            optimizer="ascent"`, whose small steps and L2 penalty keep the image within a few percent of grey.
        precision: what the network runs in ("auto", "float32", "bf16"; see `featvis.render`).
    """
    spec = model if isinstance(model, ModelSpec) else load(model)
    if display not in ("auto", "stretch", "none"):
        raise OptionError(f"display {display!r} is unknown; choose 'auto', 'stretch' or 'none'")
    targets = [target] if isinstance(target, (int, str)) else list(target)
    if isinstance(init, str) and init == "mean":
        if data is None:
            raise DatasetError("init='mean' needs data: the images whose class mean starts the optimization")
        init = torch.cat([class_mean(spec, data, t) for t in targets])
        if size is not None:
            from .render import _resize, _size

            init = _resize(init, _size(size, spec.input_size))
    objective: Objective = class_logit(targets if len(targets) > 1 else targets[0])
    if param == "auto":
        from .render import SMALL, _size

        param = "pixel" if min(_size(size, spec.input_size)) < SMALL else "fourier"
    regs: list[Penalty | Projection] = [L2(0.1 if weight is None else weight) if penalty == "l2"
                                        else L1(0.05 if weight is None else weight)]
    if blur and param == "pixel":
        regs.append(Blur(blur, 4))
    if isinstance(transforms, str) and transforms == "default":
        transforms = "auto" if param == "fourier" else Transforms([jitter(max(1, min(spec.input_size) // 28))])
    vis = render(spec, objective, param=param, size=size, steps=steps, optimizer=optimizer, lr=lr,
                 transforms=transforms, regularizers=regs, octaves=octaves, outscale=outscale, init=init, seed=seed,
                 batch=len(targets) if len(targets) > 1 else None, precision=precision, progress=progress)
    if display == "auto":  # plain ascent on pixels moves them little from the start: stretch, as the paper shows them
        display = "stretch" if param == "pixel" and optimizer == "ascent" else "none"
    return replace(vis, recipe=replace(vis.recipe, params={**vis.recipe.params, "display": display}))


def dream(
    model: ModelSpec | nn.Module | str,
    image: str | Path | torch.Tensor,
    *,
    layer: LayerLike | None = None,
    objective: Objective | None = None,
    octaves: int = 4,
    steps: int = 10,
    lr: float | None = None,
    levels: int = 4,
    jitter_pixels: int = 16,
    tile: int | None = None,
    size: int | tuple[int, int] | None = None,
    seed: int = 0,
    precision: Precision = "auto",
    progress: Callable[[int, int], None] | None = None,
    layer_name: str | None = None,
) -> Visualization:
    """DeepDream: make a photo show more of what `layer` (or `objective`) sees in it.

    Args:
        image: a path or pixels (C, H, W) in [0, 1]; the result has its size (or `size`).
        layer / objective: maximize the mean squared activation of this layer (a path, module or `Layer`;
            DeepDream), or any objective. `layer_name=` is the old name of `layer=` (deprecated).
        octaves: scales from 1 / 1.4^(octaves - 1) of the size up to the full size, `steps` steps each.
        lr: step of the Laplacian-normalized gradient (default 0.002 of the pixel range: the photo stays visible);
            `levels` pyramid bands.
        tile: optimize tiles of this many pixels (default twice the network's input size) with a random roll
            each step, so large photos fit in memory.
        precision: what the network runs in ("auto", "float32", "bf16"; see `featvis.render`).
    """
    spec = model if isinstance(model, ModelSpec) else load(model)
    if layer_name is not None:
        warnings.warn("dream(layer_name=...) is now dream(layer=...)", DeprecationWarning, stacklevel=2)
        layer = layer_name if layer is None else layer
    if objective is None:
        if layer is None:
            raise ValueError("dream needs layer= or objective=")
        objective = layer_l2(layer)
    tile = tile or 2 * max(spec.input_size)
    return render(spec, objective, param="pixel", size=size, steps=steps, optimizer="laplacian", lr=lr,
                  levels=levels, transforms=Transforms([jitter(jitter_pixels)]) if jitter_pixels else None,
                  octaves=octaves, init=image, seed=seed, tile=tile, precision=precision, progress=progress)
