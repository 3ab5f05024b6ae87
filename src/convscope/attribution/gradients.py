"""One forward, one backward: saliency (Simonyan et al. 2013), DeconvNet (Zeiler & Fergus 2014) and guided
backpropagation (Springenberg et al. 2015).

All three differentiate the target score (pre-softmax for classes) with respect to the input; they differ only in
the backward rule of the rectifiers (see `_rules`). The model is frozen for the call (eval mode, no weight
gradients), so one forward and one input-only backward is all the work; a predicted-class target takes its argmax
from that same forward pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ..hooks import frozen, function_mode
from ..models import ModelSpec
from ._core import Attribution, ResolvedTarget, Target, abs_max, as_spec, check_inputs, forward_target, \
    make_attribution, resolve_target
from ._rules import RectifierRules, Rectifiers

__all__ = ["saliency", "deconvnet", "guided_backprop", "input_gradients"]


def input_gradients(spec: ModelSpec, x: torch.Tensor, target: ResolvedTarget, *, rule: str | None = None,
                    rectifiers: Rectifiers = "all", method: str = "gradient",
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """d score / d x for a batch x (B, C, H, W), with rectifier rule `rule` (None: the true gradient).

    Returns (gradients (B, C, H, W), scores (B,), classes (B,) or None). Call with the spec that `frozen(spec)` yields.
    Only the returned tensors survive: the graph is freed before returning.
    """
    x = x.detach().requires_grad_(True)
    if rule is None:
        scores, classes, _ = forward_target(spec, x, target)
    else:
        with function_mode(RectifierRules(rule, rectifiers)) as mode:
            scores, classes, _ = forward_target(spec, x, target)
    (grads,) = torch.autograd.grad(scores.sum(), x)
    if rule is not None:
        mode.check_used(method, spec.module)
    return grads, scores.detach(), classes


def _run(method: str, model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target,
         rule: str | None, rectifiers: Rectifiers) -> Attribution:
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    resolved = resolve_target(spec, target, x, predict=False)
    with frozen(spec) as work:
        grads, scores, classes = input_gradients(work, x, resolved, rule=rule, rectifiers=rectifiers, method=method)
    params = {} if rule is None else {"rectifiers": rectifiers}
    return make_attribution(spec, method, attributions=grads, map=abs_max(grads), inputs=x, scores=scores,
                            classes=classes, target=target, params=params)


def saliency(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None) -> Attribution:
    """Gradient of the target score with respect to the input (Simonyan et al. 2013).

    Args:
        model: a `ModelSpec`, `nn.Module` or model string; left exactly as it was.
        inputs: (B, C, H, W) normalized model inputs (or one (C, H, W) input).
        target: see `convscope.attribution` (None: each input's predicted class).

    Returns an `Attribution` with `attributions` the signed gradient (B, C, H, W) and `map` (B, H, W) its largest
    absolute value over colour channels.
    """
    return _run("saliency", model, inputs, target, None, "all")


def deconvnet(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None, *,
              rectifiers: Rectifiers = "all") -> Attribution:
    """DeconvNet (Zeiler & Fergus 2014): backpropagate with every ReLU passing only positive gradients, whatever its
    forward input was. `rectifiers="all"` applies the rule to clipped ReLUs (ReLU6) too, "relu" to ReLU only.

    `attributions` (B, C, H, W) is the modified gradient, `map` (B, H, W) its largest |value| over channels.
    Raises `TargetError` when the model has no rectifier the rule could change.
    """
    return _run("deconvnet", model, inputs, target, "deconvnet", rectifiers)


def guided_backprop(model: ModelSpec | nn.Module | str, inputs: torch.Tensor, target: Target = None, *,
                    rectifiers: Rectifiers = "all") -> Attribution:
    """Guided backpropagation (Springenberg et al. 2015): every ReLU passes a gradient only where it is positive AND
    the unit was active in the forward pass. Functional ReLUs (`F.relu`, `torch.relu`, in-place variants) are
    handled like `nn.ReLU` modules. `rectifiers`: "all" (ReLU and ReLU6/Hardtanh(0, m)) or "relu".

    `attributions` (B, C, H, W) is the guided gradient, `map` (B, H, W) its largest |value| over channels.
    Raises `TargetError` when the model has no rectifier the rule could change.
    """
    return _run("guided", model, inputs, target, "guided", rectifiers)
