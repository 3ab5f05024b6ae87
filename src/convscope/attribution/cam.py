"""Grad-CAM (Selvaraju et al. 2017) and Guided Grad-CAM, on any layer with a (B, C, H, W) output.

Grad-CAM weighs a layer's channels by the spatial mean of the target's gradient there, sums them, keeps the
positive part and upsamples the map to the input. Guided Grad-CAM multiplies that map with guided backpropagation.
Both come from ONE forward pass: the rectifiers record their masks once, and the backward rule is switched between a
true-gradient backward to the layer (Grad-CAM) and a guided backward to the input.
"""

from __future__ import annotations

import weakref
from contextlib import nullcontext
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TargetError
from ..hooks import frozen, function_mode, record_calls
from ..layers import resolve
from ..models import ModelSpec
from ._core import Attribution, Target, abs_max, as_spec, check_inputs, forward_target, make_attribution, \
    resolve_target, running
from ._rules import RectifierRules, Rectifiers

__all__ = ["gradcam", "guided_gradcam", "default_layer"]

Upsample = Literal["bilinear", "bicubic", "nearest"]

# model -> {input shape (C, H, W): default layer}, learned from one probe pass per shape.
_DEFAULT_LAYERS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str]]" = weakref.WeakKeyDictionary()


def default_layer(model: ModelSpec | nn.Module | str, inputs: torch.Tensor) -> str:
    """The last layer (in the order calls finish) whose output is (B, C, H, W) with H * W > 1: the last spatial
    layer, e.g. "layer4" for a ResNet, "features" for MobileNetV2. Learned from one no-grad pass on one input and
    remembered per model and input shape."""
    spec = as_spec(model)
    key = tuple(inputs.shape[1:])
    known = _DEFAULT_LAYERS.setdefault(spec.module, {})
    if key not in known:
        with frozen(spec.module) as net, torch.inference_mode(), record_calls(net) as calls:
            net(inputs[:1])
        seen: dict[str, int] = {}
        best = None
        for name, shape in calls:
            k = seen[name] = seen.get(name, -1) + 1
            if shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1:
                best = (name, k)
        if best is None:
            raise TargetError(f"model {spec.name!r} has no layer with a spatial (B, C, H, W) output for inputs "
                              f"{tuple(inputs.shape[1:])}; Grad-CAM needs one (pass layer=...)")
        name, k = best
        known[key] = f"{name}#{k}" if seen[name] > 0 else name
    return known[key]


def _cam(activation: torch.Tensor, gradient: torch.Tensor, relu: bool) -> torch.Tensor:
    """(B, C, h, w) activation and gradient -> (B, 1, h, w) map: channels weighted by their mean gradient."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = (weights * activation).sum(1, keepdim=True)
    return F.relu(cam) if relu else cam


def _layer_output(spec: ModelSpec, layer: str, activation: torch.Tensor) -> None:
    if activation.ndim != 4:
        raise TargetError(f"Grad-CAM needs a layer with a (B, C, H, W) output; {layer!r} gives "
                          f"{tuple(activation.shape)}. Leave layer=None for the last spatial layer of {spec.name!r}.")


def _gradcam_pass(spec: ModelSpec, x: torch.Tensor, target, layer: str, relu: bool, guided: bool,
                  rectifiers: Rectifiers):
    """One forward; a backward to `layer` for the map and, if `guided`, a guided backward to the input."""
    # Plain Grad-CAM: the graph starts at the layer (nothing upstream is recorded). Guided: it starts at the input.
    x = x.detach().requires_grad_(guided)
    with function_mode(RectifierRules("gradient", rectifiers)) if guided else nullcontext() as mode:
        scores, classes, found = forward_target(spec, x, target, layers=[layer], leaves=not guided)
    activation = found[layer]
    _layer_output(spec, layer, activation)
    gradient = None
    if scores.requires_grad:  # with the graph starting at the layer, a target before it has no graph at all
        (gradient,) = torch.autograd.grad(scores.sum(), activation, retain_graph=guided, allow_unused=True)
    if gradient is None:
        raise TargetError(f"the target does not depend on layer {layer!r} (is the target's layer before it?)")
    cam = _cam(activation.detach(), gradient, relu)
    guided_grads = None
    if guided:
        mode.rule, mode.ruled = "guided", 0
        (guided_grads,) = torch.autograd.grad(scores.sum(), x)
        mode.check_used("guided-gradcam", spec.module)
    return cam, guided_grads, scores.detach(), classes


def _upsample(cam: torch.Tensor, size: tuple[int, int], mode: Upsample) -> torch.Tensor:
    if mode == "nearest":
        return F.interpolate(cam, size=size, mode="nearest")
    return F.interpolate(cam, size=size, mode=mode, align_corners=False)


def _check_upsample(upsample: str) -> None:
    if upsample not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"upsample must be 'bilinear', 'bicubic' or 'nearest', got {upsample!r}")


def gradcam(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None, *,
            layer: str | nn.Module | None = None, relu: bool = True, upsample: Upsample = "bilinear") -> Attribution:
    """Grad-CAM: `relu(sum_c mean_hw(d score / d A_c) * A_c)` at `layer`, upsampled to the input.

    Args:
        model, inputs, target: as for every method (see `convscope.attribution`).
        layer: a `named_modules()` path (`"layer4"`, `"features.18"`, `"layer1.0.relu#1"`) or module with a
            (B, C, h, w) output; None picks the last spatial layer (`default_layer`).
        relu: keep only the positive part (the paper's choice); False keeps the signed map.
        upsample: interpolation to the input size ("bilinear", align_corners=False; "bicubic"; "nearest").

    Returns an `Attribution` with `attributions` (B, 1, H, W) and `map` (B, H, W) the upsampled map, and
    `extras["cam"]` (B, 1, h, w) the map at the layer's resolution.
    """
    _check_upsample(upsample)
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    name = _layer_name(spec, layer, x)
    resolved = resolve_target(spec, target, x, predict=False)
    with running(spec, x, resolved, [name]) as work:
        cam, _, scores, classes = _gradcam_pass(work, x, resolved, name, relu, False, "all")
    up = _upsample(cam, x.shape[2:], upsample)
    return make_attribution(spec, "gradcam", attributions=up, map=up[:, 0], inputs=x, scores=scores, classes=classes,
                            target=target, params={"layer": name, "relu": relu, "upsample": upsample},
                            extras={"cam": cam})


def guided_gradcam(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None, *,
                   layer: str | nn.Module | None = None, upsample: Upsample = "bilinear",
                   rectifiers: Rectifiers = "all") -> Attribution:
    """Guided Grad-CAM: guided backpropagation (B, C, H, W) times the upsampled, rectified Grad-CAM map (B, 1, H, W).

    Options as in `gradcam` and `guided_backprop`. `map` (B, H, W) is the largest |value| over channels;
    `extras["cam"]` is the low-resolution Grad-CAM map.
    """
    _check_upsample(upsample)
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    name = _layer_name(spec, layer, x)
    resolved = resolve_target(spec, target, x, predict=False)
    # The guided backward runs to the input through max-pools, whose argmax a float32 rounding change (folding)
    # can flip on near-ties: run the model as written, as for saliency and guided backprop.
    with frozen(spec) as work:
        cam, guided, scores, classes = _gradcam_pass(work, x, resolved, name, True, True, rectifiers)
    attributions = guided * _upsample(cam, x.shape[2:], upsample)
    return make_attribution(spec, "guided-gradcam", attributions=attributions, map=abs_max(attributions), inputs=x,
                            scores=scores, classes=classes, target=target,
                            params={"layer": name, "upsample": upsample, "rectifiers": rectifiers},
                            extras={"cam": cam})


def _layer_name(spec: ModelSpec, layer: str | nn.Module | None, x: torch.Tensor) -> str:
    if layer is None:
        return default_layer(spec, x)
    return resolve(spec.module, layer).name
