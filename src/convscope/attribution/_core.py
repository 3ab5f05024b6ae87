"""What all attribution methods share: targets, the one result type, and running the model safely.

Every method is `method(model, inputs, target=..., **options) -> Attribution`. `model` is anything `models.load`
accepts (a `ModelSpec`, an `nn.Module`, or a model string); `inputs` is a normalized model input (B, C, H, W)
(use `spec.preprocess(image)` for a file). Targets:

- `None`: the predicted class of each input;
- `int` or list of ints: that class logit (pre-softmax) per input;
- `str` class name ("tabby"); `str` unit `"LAYER:CH"` or `"LAYER:CH@ROW,COL"` (its mean activation over space, or
  the activation at that position) or a `Unit`;
- any callable `fn(output) -> (B,)` on the model's output (like pytorch-grad-cam's `ClassifierOutputTarget`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import InputShapeError, NonFiniteError, TargetError
from ..hooks import capture
from ..layers import Unit, check_unit, parse_unit
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin

__all__ = ["Attribution", "Target", "ResolvedTarget", "resolve_target", "as_spec", "check_inputs"]

Target = int | str | Unit | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def as_spec(model: ModelSpec | nn.Module | str) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else load(model)


def check_inputs(spec: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    """Validate a (B, C, H, W) input batch for `spec` and move it to the model's device/dtype (no copy if there)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor (B, C, H, W), got {type(inputs).__name__}; "
                        "use spec.preprocess(image) for a file")
    if inputs.ndim == 3:
        inputs = inputs.unsqueeze(0)
    if inputs.ndim != 4:
        raise InputShapeError(f"inputs must have shape (B, C, H, W), got {tuple(inputs.shape)}")
    if inputs.shape[1] != spec.channels:
        raise InputShapeError(f"inputs have {inputs.shape[1]} channels; model {spec.name!r} takes {spec.channels}")
    if not torch.isfinite(inputs).all():
        raise NonFiniteError("inputs contain NaN or infinite values")
    return inputs.detach().to(spec.device, spec.dtype)


@dataclass(frozen=True)
class ResolvedTarget:
    """A target made concrete for one batch.

    `score(output, cap)` returns (B,) scores with gradient; `cap` is the `Capture` of `layer` (None for output
    targets). `classes` holds the class index per input when the target is a class, else None.
    """

    description: str
    score: Callable[[torch.Tensor, Any], torch.Tensor]
    classes: torch.Tensor | None = None
    layer: str | None = None
    unit: Unit | None = None


def _class_target(spec: ModelSpec, classes: torch.Tensor, description: str) -> ResolvedTarget:
    def score(output: torch.Tensor, _cap: Any) -> torch.Tensor:
        if output.ndim != 2:
            raise TargetError(f"a class target needs an output (B, classes); model {spec.name!r} gives "
                              f"{tuple(output.shape)}")
        n = output.shape[1]
        if int(classes.max()) >= n or int(classes.min()) < 0:
            raise TargetError(f"class {int(classes.max())} is out of range; model {spec.name!r} has classes 0..{n - 1}")
        return output.gather(1, classes.to(output.device).view(-1, 1)).squeeze(1)

    return ResolvedTarget(description, score, classes=classes)


def unit_score(activation: torch.Tensor, unit: Unit) -> torch.Tensor:
    """(B, C, H, W) or (B, F) activation -> (B,) score of `unit`: a position's value, a channel's spatial mean,
    or a whole layer's mean."""
    if unit.channel is None:
        return activation.flatten(1).mean(1)
    check_unit(unit, activation.shape)
    channel = activation[:, unit.channel]
    if unit.row is not None:
        return channel[:, unit.row, unit.col]
    return channel.flatten(1).mean(1) if channel.ndim > 1 else channel


def resolve_target(spec: ModelSpec, target: Target, inputs: torch.Tensor) -> ResolvedTarget:
    """Make `target` concrete for `inputs` (B, C, H, W). `None` runs one no-grad forward to find the prediction."""
    batch = inputs.shape[0]
    if target is None:
        with torch.inference_mode():
            output = spec.module(inputs)
        if output.ndim != 2:
            raise TargetError(f"model {spec.name!r} output {tuple(output.shape)} has no classes; give a target")
        classes = output.argmax(1)
        return _class_target(spec, classes.clone(), "predicted class")
    if isinstance(target, Unit) or (isinstance(target, str) and ":" in target):
        unit = parse_unit(target)

        def score(_output: torch.Tensor, cap: Any) -> torch.Tensor:
            return unit_score(cap[unit.layer], unit)

        return ResolvedTarget(f"unit {unit}", score, layer=unit.layer, unit=unit)
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        index = spec.class_index(target)
        return _class_target(spec, torch.full((batch,), index, dtype=torch.long), f"class {spec.class_name(index)}")
    if isinstance(target, (int, str)):
        index = int(target)
        return _class_target(spec, torch.full((batch,), index, dtype=torch.long), f"class {spec.class_name(index)}")
    if isinstance(target, (torch.Tensor, Sequence)) and not callable(target):
        classes = torch.as_tensor(list(target) if not isinstance(target, torch.Tensor) else target).long().flatten()
        if classes.numel() != batch:
            raise TargetError(f"{classes.numel()} targets for a batch of {batch} inputs")
        return _class_target(spec, classes, "classes")
    if callable(target):
        def score(output: torch.Tensor, _cap: Any) -> torch.Tensor:
            value = target(output)
            if value.ndim == 0:
                value = value.expand(output.shape[0])
            if value.shape != (output.shape[0],):
                raise TargetError(f"target callable returned shape {tuple(value.shape)}; expected ({output.shape[0]},)")
            return value

        return ResolvedTarget(getattr(target, "__name__", "callable"), score)
    raise TypeError(f"target must be an int, class name, unit 'LAYER:CH', callable or None; got {type(target).__name__}")


def forward_scores(spec: ModelSpec, inputs: torch.Tensor, target: ResolvedTarget) -> torch.Tensor:
    """Run the model on `inputs` (graph kept) and return the (B,) target scores. Unit targets stop at their layer."""
    if target.layer is None:
        return target.score(spec.module(inputs), None)
    with capture(spec.module, target.layer, detach=False, stop=True) as cap:
        cap.run(inputs)
        return target.score(None, cap)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Attribution(ResultMixin):
    """The result of every attribution method.

    Attributes:
        attributions: (B, C, H, W) signed attribution in input space (Grad-CAM: (B, 1, H, W) upsampled map).
        map: (B, H, W) the 2-D map that is drawn (e.g. max |grad| over channels for saliency).
        inputs: (B, C, H, W) the model inputs that were explained (normalized).
        scores: (B,) the target score at each input.
        classes: (B,) class index per input for class targets, else None.
        method: "saliency", "guided", "gradcam", ...
        recipe: how it was made (model, method, target, options, seed, versions).
        extras: method-specific tensors (e.g. Grad-CAM's low-resolution map, occlusion's score grid).
    """

    attributions: torch.Tensor
    map: torch.Tensor
    inputs: torch.Tensor
    scores: torch.Tensor
    classes: torch.Tensor | None
    method: str
    recipe: Recipe
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return self.map.shape[0]

    def to_image(self, index: int = 0, *, overlay: bool = True, **kwargs: Any):
        """The map of input `index` as a PIL image: a heatmap over the image (overlay) or alone."""
        from ..render.overlay import attribution_image

        return attribution_image(self, index, overlay=overlay, **kwargs)
