"""Does a map mean anything? Deletion/insertion curves (Petsiuk et al. 2018) and the model-parameter randomization
sanity check (Adebayo et al. 2018, in `randomization`).

Deletion replaces the most salient pixels first by a baseline (default: black, i.e. pixel value 0 through the model's
normalization) and records the target's score after each step: a faithful map makes the score fall fast (low AUC).
Insertion starts from a blurred copy of the image (Gaussian, `blur_sigma` pixels) and puts the original pixels back,
most salient first: a faithful map makes the score rise fast (high AUC). Scores are softmax probabilities for class
targets (as in the paper; `probability=False` for logits) and raw values for unit and callable targets.

A "pixel" is a spatial position: all channels are replaced together. Ties in the map are broken by a seeded random
order, so flat regions (e.g. zeros of Grad-CAM) are removed in no particular spatial order. All steps of all images
run as chunked forward passes (`batch_size` images each) under `torch.inference_mode`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputShapeError, OptionError, TargetError
from ..models import ModelSpec
from ..results import Recipe, ResultMixin
from ._core import Attribution, ResolvedTarget, Target, as_spec, check_inputs, forward_target, resolve_target, \
    running, select_target, target_param
from ._sanity import RandomizationCheck, randomization, spearman

__all__ = ["Curves", "deletion", "insertion", "randomization", "RandomizationCheck", "blur", "spearman"]

Fill = Literal["black", "zero", "blur"]


@dataclass(frozen=True)
class Curves(ResultMixin):
    """Deletion or insertion curves.

    Attributes:
        kind: "deletion" or "insertion".
        curves: (B, steps + 1) the score after removing/inserting `fractions[k]` of the pixels.
        auc: (B,) area under each curve over fractions in [0, 1] (trapezoid rule).
        fractions: (steps + 1,) the fraction of pixels changed at each step, 0 to 1.
        score: "probability", "logit" or "score" (unit and callable targets).
    """

    kind: str
    curves: torch.Tensor
    auc: torch.Tensor
    fractions: torch.Tensor
    score: str
    recipe: Recipe

    def to_image(self, **kwargs: Any):
        from ..render.overlay import curve_plot

        return curve_plot(self, **kwargs)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of (B, C, H, W) with standard deviation `sigma` pixels (replicate padding). Blurring commutes
    with per-channel normalization, so it may run on model inputs directly."""
    if sigma <= 0:
        return x.clone()
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    out = F.pad(x, (radius, radius, 0, 0), mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    out = F.pad(out, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def _fill(spec: ModelSpec, x: torch.Tensor, fill: Fill | torch.Tensor, blur_sigma: float) -> torch.Tensor:
    if isinstance(fill, torch.Tensor):
        try:
            return fill.to(x.device, x.dtype).expand_as(x)
        except RuntimeError:
            raise InputShapeError(f"fill of shape {tuple(fill.shape)} does not fit inputs {tuple(x.shape)}") from None
    if fill == "black":
        return spec.normalize(torch.zeros_like(x))
    if fill == "zero":
        return torch.zeros_like(x)
    if fill == "blur":
        return blur(x, blur_sigma)
    raise OptionError(f"fill must be 'black', 'zero', 'blur' or a tensor; got {fill!r}")


def _target(spec: ModelSpec, attribution: Attribution | torch.Tensor, x: torch.Tensor, target: Target
            ) -> ResolvedTarget:
    if target is not None or not isinstance(attribution, Attribution):
        return resolve_target(spec, target, x)
    if attribution.classes is not None:
        return resolve_target(spec, attribution.classes, x)
    given = attribution.recipe.params.get("target")
    if isinstance(given, str) and ":" in given:
        return resolve_target(spec, given, x)
    raise TargetError(f"the {attribution.method} map explains target {given!r}, which cannot be re-created; pass "
                      "target=... to evaluate it")


def _scores(spec: ModelSpec, batch: torch.Tensor, target: ResolvedTarget, probability: bool) -> torch.Tensor:
    if target.classes is not None and probability:
        output = spec.module(batch)
        return output.softmax(1).gather(1, target.classes.to(output.device).view(-1, 1)).squeeze(1)
    return forward_target(spec, batch, target)[0]


def _order(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, H, W) maps -> (B, H*W) rank of each pixel (0 = most salient), ties in a seeded random order."""
    flat = maps.detach().flatten(1).float()
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    order = perm[torch.argsort(flat[:, perm], dim=1, descending=True, stable=True)]
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


def _curves(kind: str, model: ModelSpec | nn.Module | str, attribution: Attribution | torch.Tensor,
            inputs: torch.Tensor | None, target: Target, steps: int, fill: Fill | torch.Tensor, start: str | None,
            blur_sigma: float, batch_size: int, probability: bool, seed: int) -> Curves:
    spec = as_spec(model)
    if isinstance(attribution, Attribution):
        maps = attribution.map
        inputs = attribution.inputs if inputs is None else inputs
    else:
        maps = attribution
        if inputs is None:
            raise OptionError("pass inputs=... with a map tensor (an Attribution carries its inputs)")
    x = check_inputs(spec, inputs)
    maps = torch.as_tensor(maps).to(x.device)
    if maps.ndim == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise InputShapeError(f"maps must have shape (B, H, W) = {(x.shape[0], *x.shape[2:])}; got {tuple(maps.shape)}")
    if steps < 1 or batch_size < 1:
        raise OptionError(f"steps and batch_size must be at least 1; got steps={steps}, batch_size={batch_size}")
    resolved = _target(spec, attribution, x, target)
    replacement = _fill(spec, x, fill, blur_sigma)
    begin, end = (x, replacement) if kind == "deletion" else (replacement, x)
    batch, pixels = x.shape[0], x.shape[2] * x.shape[3]
    rank = _order(maps, seed)
    counts = (torch.arange(steps + 1, device=x.device) * pixels + steps // 2) // steps
    total = batch * (steps + 1)
    curves = torch.empty(total, dtype=torch.float64, device=x.device)
    with running(spec, x, resolved) as work, torch.inference_mode():
        for first in range(0, total, batch_size):
            flat = torch.arange(first, min(first + batch_size, total), device=x.device)
            b, k = flat // (steps + 1), flat % (steps + 1)
            changed = (rank[b] < counts[k].view(-1, 1)).view(-1, 1, *x.shape[2:])
            perturbed = torch.where(changed, end[b], begin[b])
            curves[flat] = _scores(work, perturbed, select_target(spec, resolved, b), probability).double()
    curves = curves.view(batch, steps + 1).cpu()
    auc = (curves[:, 1:] + curves[:, :-1]).sum(1) / (2 * steps)
    score = ("probability" if probability else "logit") if resolved.classes is not None else "score"
    fill_name = fill if isinstance(fill, str) else "tensor"
    params = {"steps": steps, "target": target_param(target) if target is not None else "from attribution",
              "fill": fill_name, "blur_sigma": blur_sigma, "score": score, "seed": seed,
              "method": attribution.method if isinstance(attribution, Attribution) else "map"}
    if start is not None:
        params["start"] = start
    recipe = Recipe(kind=kind, model=spec.describe(), params=params)
    return Curves(kind, curves, auc, torch.arange(steps + 1, dtype=torch.float64) / steps, score, recipe)


def deletion(model: ModelSpec | nn.Module | str, attribution: Attribution | torch.Tensor, *,
             inputs: torch.Tensor | None = None, target: Target = None, steps: int = 50,
             fill: Fill | torch.Tensor = "black", blur_sigma: float = 5.0, batch_size: int = 64,
             probability: bool = True, seed: int = 0) -> Curves:
    """Deletion curve: remove the most salient pixels first (replaced by `fill`) in `steps` equal steps.

    Args:
        model: as for the attribution methods; left unchanged.
        attribution: an `Attribution` (its map, inputs and class are used) or maps (B, H, W) with `inputs`.
        inputs: (B, C, H, W) model inputs, needed with a map tensor.
        target: what to score; None takes the attribution's class (or unit), or the predicted class for maps.
        steps: number of deletion steps; the curve has steps + 1 points (0% .. 100% of the pixels).
        fill: "black" (pixel 0 through the normalization), "zero" (0 in input space), "blur", or a tensor.
        blur_sigma: Gaussian sigma in pixels for `fill="blur"`.
        batch_size: images per forward pass.
        probability: score class targets by softmax probability (True) or logit.
        seed: order of tied pixels.

    Returns `Curves` with `curves` (B, steps + 1) and `auc` (B,): lower is better.
    """
    return _curves("deletion", model, attribution, inputs, target, steps, fill, None, blur_sigma, batch_size,
                   probability, seed)


def insertion(model: ModelSpec | nn.Module | str, attribution: Attribution | torch.Tensor, *,
              inputs: torch.Tensor | None = None, target: Target = None, steps: int = 50,
              start: Fill | torch.Tensor = "blur", blur_sigma: float = 5.0, batch_size: int = 64,
              probability: bool = True, seed: int = 0) -> Curves:
    """Insertion curve: start from `start` (default: the image blurred with `blur_sigma` pixels) and insert the
    original pixels, most salient first, in `steps` equal steps. Arguments as in `deletion`.

    Returns `Curves` with `curves` (B, steps + 1) and `auc` (B,): higher is better.
    """
    return _curves("insertion", model, attribution, inputs, target, steps, start,
                   start if isinstance(start, str) else "tensor", blur_sigma, batch_size, probability, seed)
