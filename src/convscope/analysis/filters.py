"""A convolution's weights as pictures, with a smoothness score per filter.

Smoothness (`filter_smoothness`) is one minus the filter's high-frequency energy share, measured with the graph
Laplacian of the kernel grid (4-neighbours, no wrap-around):

    smoothness = 1 - sum_c sum_{neighbours p~q} (w[c,p] - w[c,q])^2 / (lambda_max * sum_c sum_p w[c,p]^2)

where lambda_max is the largest eigenvalue of that Laplacian (2 + 2 cos(pi / kh) + 2 + 2 cos(pi / kw)), so the
score lies in [0, 1]: 1 for a constant kernel, close to 1 for smooth blobs, edges and gradients, about 0.55 for
white noise (for any kernel size from 3x3 to 11x11), and 0 for the most oscillating pattern the grid allows. It is
scale invariant and sums over input channels weighted by their energy. Trained first-layer filters are smooth;
scores near the noise level hint at under-training or a learning rate too high. It is undefined (NaN) for 1x1
kernels and for all-zero filters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from ..errors import LayerNotFoundError
from ..layers import resolve_layer
from ..models import ModelSpec, load
from ..render.grids import FilterNorm, filter_matrix, filter_tiles
from ..results import Recipe, ResultMixin

__all__ = ["FilterGrid", "filters", "filter_smoothness"]


def _path_lambda_max(n: int) -> float:
    return 2.0 + 2.0 * math.cos(math.pi / n) if n > 1 else 0.0


def filter_smoothness(weights: torch.Tensor) -> torch.Tensor:
    """Smoothness in [0, 1] of each filter of `weights` (C_out, C_in, kh, kw) -> (C_out,) (float64); see the module
    docstring for the definition. NaN for 1x1 kernels and all-zero filters."""
    if weights.ndim != 4:
        raise ValueError(f"filter_smoothness needs weights (C_out, C_in, kh, kw), got shape {tuple(weights.shape)}")
    w = weights.detach().to(torch.float64)
    kh, kw = w.shape[2:]
    lam = _path_lambda_max(kh) + _path_lambda_max(kw)
    rough = (w[..., 1:, :] - w[..., :-1, :]).pow(2).sum(dim=(1, 2, 3)) + \
        (w[..., :, 1:] - w[..., :, :-1]).pow(2).sum(dim=(1, 2, 3))
    energy = w.pow(2).sum(dim=(1, 2, 3))
    if lam == 0:
        return torch.full_like(energy, float("nan"))
    score = 1.0 - rough / (lam * energy)
    return torch.where(energy > 0, score, torch.full_like(score, float("nan")))


@dataclass(frozen=True, eq=False)
class FilterGrid(ResultMixin):
    """The weights of one convolution.

    Attributes:
        weights: (C_out, C_in / groups, kh, kw), a detached CPU copy.
        smoothness: (C_out,) `filter_smoothness` of each filter.
        layer: the conv layer's path.
        input_space: True when the conv reads the model's input (in_channels == the model's channels, 1 or 3), so
            each filter is drawn as one grayscale or RGB tile; otherwise as a row of per-input-channel kernels.
        recipe: how it was made.
    """

    weights: torch.Tensor
    smoothness: torch.Tensor
    layer: str
    input_space: bool
    recipe: Recipe

    def to_image(self, *, max_filters: int | None = 64, max_inputs: int = 16, norm: FilterNorm = "filter",
                 columns: int | None = None) -> Image.Image:
        """The filters as a picture.

        Args:
            max_filters: draw the first this-many filters (`None`: all).
            max_inputs: for deeper layers, the first this-many input channels (columns) per filter.
            norm: "filter" scales each filter by its own max |w|; "shared" by the layer's max |w| (shows which
                filters are strong). Zero is mid grey (RGB/grayscale tiles) or white (deeper layers).
            columns: tiles per row for input-space filters.
        """
        n_out, n_in = self.weights.shape[:2]
        shown = n_out if max_filters is None else min(n_out, max_filters)
        w = self.weights[:shown]
        scores = [_fmt(float(s)) for s in self.smoothness[:shown]]
        scale = "each filter scaled by its own max|w|" if norm == "filter" else "one scale for the layer"
        kernel = f"{self.weights.shape[2]}x{self.weights.shape[3]}"
        median = self.smoothness.nanmedian()
        title = [f"{self.layer}: {shown} of {n_out} filters, {kernel}, {scale}",
                 "smoothness undefined for 1x1 kernels" if bool(median.isnan()) else
                 f"s = smoothness (1 smooth, ~0.55 noise); median {_fmt(float(median))}"]
        labels = [f"{i} s={s}" for i, s in enumerate(scores)]
        if self.input_space:
            return filter_tiles(w, labels=labels, norm=norm, columns=columns, title=title)
        if n_in == 1:  # depthwise: one kernel per filter, drawn as grayscale tiles (0 = mid grey)
            title[0] += "; depthwise (one kernel per filter)"
            return filter_tiles(w, labels=labels, norm=norm, columns=columns, title=title)
        inputs = min(n_in, max_inputs)
        title[0] += f"; rows: filters, columns: first {inputs} of {n_in} input channels"
        return filter_matrix(w[:, :inputs], row_labels=labels, column_labels=[str(j) for j in range(inputs)],
                             norm=norm, title=title)

    def table(self) -> list[dict[str, Any]]:
        """One dict per filter: index, smoothness (None when undefined), L2 norm."""
        norms = self.weights.flatten(1).norm(dim=1)
        return [{"filter": i, "smoothness": None if math.isnan(float(s)) else round(float(s), 4),
                 "norm": round(float(n), 6)} for i, (s, n) in enumerate(zip(self.smoothness, norms))]

    def summary(self) -> dict[str, Any]:
        return {"layer": self.layer, "shape": list(self.weights.shape), "input_space": self.input_space,
                "filters": self.table(), "recipe": self.recipe.to_dict()}


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _convs(module: nn.Module) -> list[str]:
    return [n for n, m in module.named_modules() if isinstance(m, nn.Conv2d)]


def filters(model: ModelSpec | nn.Module | str, layer: str | nn.Module | None = None) -> FilterGrid:
    """The filters of a 2-D convolution (`layer`; default the model's first `nn.Conv2d`), with smoothness scores.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string (`convscope.models.load`).
        layer: a `named_modules()` path or module of an `nn.Conv2d` (transposed convs are not filters of this kind).
    """
    spec = load(model)
    convs = _convs(spec.module)
    if layer is None:
        if not convs:
            raise LayerNotFoundError(f"model {spec.name!r} has no Conv2d layer")
        layer = convs[0]
    name, module = resolve_layer(spec.module, layer)
    if not isinstance(module, nn.Conv2d):
        listed = ", ".join(repr(c) for c in convs[:6]) + (f", ... ({len(convs)} in all)" if len(convs) > 6 else "")
        raise LayerNotFoundError(f"layer {name!r} is a {type(module).__name__}, not a Conv2d; filters are drawn for "
                                 f"convolutions: {listed or 'this model has none'}")
    weights = module.weight.detach().to("cpu", torch.float32).clone()
    input_space = module.in_channels == spec.channels and spec.channels in (1, 3) and module.groups == 1
    recipe = Recipe(kind="filters", model=spec.describe(), params={"layer": name})
    return FilterGrid(weights=weights, smoothness=filter_smoothness(weights).float(), layer=name,
                      input_space=input_space, recipe=recipe)
