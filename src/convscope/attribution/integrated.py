"""Integrated Gradients (Sundararajan et al. 2017): `(x - x') * integral_0^1 d score(x' + a (x - x')) / dx da`.

The integral is a quadrature over `steps` points of the straight path from the baseline x' to x: Gauss-Legendre
(default, exact for polynomials of degree 2*steps - 1) or a Riemann sum (left, right, middle, trapezoid). All
(path point, input) pairs are flattened and run in chunks of `internal_batch_size`; each chunk's graph is freed
before the next, so memory is one chunk's. Completeness (the attributions sum to score(x) - score(x')) is checked
on every call: `extras["delta"]` holds the gap per input; the scores at the inputs and at the baselines come from
one no-grad forward of both.

Where the network starts with a convolution of the input (nearly every CNN), the per-point gradients stop at that
convolution's output and are summed there; its expensive input backward runs once per input instead of once per
path point (`_summed`; same numbers up to float rounding).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from ..errors import InputShapeError, OptionError, TargetError
from ..hooks import frozen
from ..models import ModelSpec
from ._core import Attribution, ResolvedTarget, Target, as_spec, check_inputs, forward_target, make_attribution, \
    resolve_target, select_target
from ._summed import SummedGradients, linear_input_layer

__all__ = ["integrated_gradients", "quadrature"]

Quadrature = Literal["gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"]
Baseline = Literal["black", "zero"]


def quadrature(steps: int, method: Quadrature = "gausslegendre") -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights), each (steps,): the points in [0, 1] and their weights (summing to 1)."""
    if steps < 1 or (method == "riemann_trapezoid" and steps < 2):
        raise OptionError(f"steps must be at least {2 if method == 'riemann_trapezoid' else 1}, got {steps}")
    n = steps
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * weights
    if method == "riemann_trapezoid":
        weights = np.full(n, 1.0 / (n - 1))
        weights[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, n), weights
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    if method not in offsets:
        raise OptionError(f"unknown quadrature {method!r}; choose gausslegendre, riemann_trapezoid, riemann_left, "
                          "riemann_right or riemann_middle")
    return (np.arange(n) + offsets[method]) / n, np.full(n, 1.0 / n)


def _baseline(spec: ModelSpec, x: torch.Tensor, baseline: torch.Tensor | float | Baseline) -> torch.Tensor:
    if isinstance(baseline, str):
        if baseline == "zero":
            return torch.zeros_like(x)
        if baseline == "black":  # pixel value 0 through the model's normalization
            return spec.normalize(torch.zeros_like(x))
        raise OptionError(f"baseline must be 'black', 'zero', a number or a tensor; got {baseline!r}")
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    base = torch.as_tensor(baseline).to(x.device, x.dtype)
    try:
        return base.expand_as(x).contiguous()
    except RuntimeError:
        raise InputShapeError(f"baseline of shape {tuple(base.shape)} does not fit inputs {tuple(x.shape)}; give "
                              "(C, H, W) or (B, C, H, W)") from None


def _endpoints(spec: ModelSpec, x: torch.Tensor, base: torch.Tensor, target: ResolvedTarget,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, ResolvedTarget]:
    """One no-grad forward of the inputs and their baselines (2B): (scores at x (B,), scores at the baselines (B,),
    classes (B,) or None, the target with a predicted class fixed to x's prediction)."""
    batch = x.shape[0]
    both = torch.cat([x, base])
    twice = torch.arange(2 * batch, device=x.device) % batch
    with torch.inference_mode():
        if target.predicted:
            output = spec.run(both)
            if output.ndim != 2:
                raise TargetError(f"model {spec.name!r} output {tuple(output.shape)} has no classes; give a target")
            target = resolve_target(spec, output[:batch].argmax(1).clone(), x)
            scores = select_target(spec, target, twice).score(output, None)
        else:
            scores, _, _ = forward_target(spec, both, select_target(spec, target, twice))
    scores = scores.clone()  # out of inference mode
    return scores[:batch], scores[batch:], target.classes, target


def integrated_gradients(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None, *,
                         baseline: torch.Tensor | float | Baseline = "black", steps: int = 50,
                         method: Quadrature = "gausslegendre", internal_batch_size: int | None = None,
                         ) -> Attribution:
    """Integrated Gradients along the straight path from `baseline` to each input.

    Args:
        model, inputs, target: as for every method; `target=None` explains each input's predicted class.
        baseline: "black" (pixel 0 through the model's normalization; the default), "zero" (0 in input space), a
            number (input space) or a tensor (C, H, W) / (B, C, H, W) in input space.
        steps: quadrature points along the path.
        method: the quadrature rule (see `quadrature`).
        internal_batch_size: most path points per forward/backward pass (None: all B * steps at once).

    Returns an `Attribution`: `attributions` (B, C, H, W), `map` (B, H, W) their sum over channels (signed; it sums to
    the score difference), `extras["delta"]` (B,) = sum(attributions) - (score(x) - score(baseline)) and
    `extras["baseline_scores"]` (B,).
    """
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    base = _baseline(spec, x, baseline)
    alphas, weights = quadrature(int(steps), method)
    resolved = resolve_target(spec, target, x, predict=False)
    batch, total_count = x.shape[0], x.shape[0] * len(alphas)
    chunk = total_count if internal_batch_size is None else int(internal_batch_size)
    if chunk < 1:
        raise OptionError(f"internal_batch_size must be at least 1, got {internal_batch_size}")
    alpha_t = torch.as_tensor(alphas, device=x.device, dtype=x.dtype)
    weight_t = torch.as_tensor(weights, device=x.device, dtype=x.dtype)
    difference = x - base
    with frozen(spec) as work:
        scores, baseline_scores, classes, resolved = _endpoints(work, x, base, resolved)
        summed = SummedGradients(work, x, resolved, linear_input_layer(work.module, x, key=spec.module))
        for start in range(0, total_count, chunk):
            flat = torch.arange(start, min(start + chunk, total_count), device=x.device)
            j, b = flat // batch, flat % batch  # step-major order
            summed.add(base[b] + alpha_t[j].view(-1, 1, 1, 1) * difference[b], b, weight_t[j])
        total = summed.total()
    attributions = total * difference
    delta = attributions.flatten(1).sum(1) - (scores - baseline_scores)
    params = {"baseline": baseline if isinstance(baseline, (str, int, float)) else "tensor", "steps": int(steps),
              "quadrature": method, "internal_batch_size": internal_batch_size}
    return make_attribution(spec, "ig", attributions=attributions, map=attributions.sum(1), inputs=x, scores=scores,
                            classes=classes, target=target, params=params,
                            extras={"delta": delta, "baseline_scores": baseline_scores})
