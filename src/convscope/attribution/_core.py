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

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import TargetError
from ..accel.fold import folded
from ..hooks import capture, frozen
from ..layers import Unit, check_unit, parse_unit
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin

__all__ = ["Attribution", "Target", "ResolvedTarget", "resolve_target", "as_spec", "check_inputs", "forward_scores",
           "forward_target", "select_target", "target_param", "unit_score", "make_attribution", "abs_max", "clean_pass",
           "running"]

Target = int | str | Unit | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


def as_spec(model: ModelSpec | nn.Module | str) -> ModelSpec:
    return model if isinstance(model, ModelSpec) else load(model)


def check_inputs(spec: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    """Validate a (B, C, H, W) input batch for `spec` and move it to the model's device/dtype (no copy if there)."""
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a tensor (B, C, H, W), got {type(inputs).__name__}; "
                        "use spec.preprocess(image) for a file")
    return spec.batch(inputs, "inputs")


@contextlib.contextmanager
def running(spec: ModelSpec, inputs: torch.Tensor, target: "ResolvedTarget",
            layers: Sequence[str] = ()) -> Iterator[ModelSpec]:
    """Yields `spec` around a frozen working copy of its module (eval mode, no weight gradients; the user's model is
    not touched, see `hooks.frozen`) with its eval-mode BatchNorms folded into the convolutions before them
    (`convscope.accel.fold`; not around the target's layer or `layers`, whose outputs must stay those of the model
    as written). `inputs` (B, C, H, W) sets the input size. Run the YIELDED spec.

    For forward passes and gradients at a layer (Grad-CAM, deletion/insertion scores). Gradients with respect to
    the input do not use it: folding changes float32 rounding by ~1e-7, and where a max-pool's window holds near-equal
    values that can move its argmax, so the input gradient at a few pixels would differ from the model as written."""
    keep = [*layers, *([target.layer] if target.layer is not None else [])]
    with frozen(spec) as work, folded(work.module, inputs[:1], keep):
        yield work


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
    predicted: bool = False  # resolve_target(None, predict=False): argmax taken from the explained forward itself


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


def _predicted_score(spec: ModelSpec) -> Callable[[torch.Tensor, Any], torch.Tensor]:
    def score(output: torch.Tensor, _cap: Any) -> torch.Tensor:
        if output.ndim != 2:
            raise TargetError(f"model {spec.name!r} output {tuple(output.shape)} has no classes; give a target")
        return output.gather(1, output.detach().argmax(1, keepdim=True)).squeeze(1)

    return score


def resolve_target(spec: ModelSpec, target: Target, inputs: torch.Tensor, *, predict: bool = True) -> ResolvedTarget:
    """Make `target` concrete for `inputs` (B, C, H, W).

    `None` with `predict=True` runs one no-grad forward to find the prediction; with `predict=False` it returns a
    target whose classes are the argmax of the very forward pass being explained (see `forward_target`), which
    saves that extra pass.
    """
    batch = inputs.shape[0]
    if target is None and not predict:
        return ResolvedTarget("predicted class", _predicted_score(spec), predicted=True)
    if target is None:
        with frozen(spec) as work, torch.inference_mode():
            output = work.run(inputs)
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
        return target.score(spec.run(inputs), None)
    with capture(spec.module, target.layer, detach=False, stop=True) as cap:
        cap.run(inputs)
        return target.score(None, cap)  # type: ignore[arg-type]


def forward_target(spec: ModelSpec, inputs: torch.Tensor, target: ResolvedTarget, layers: Sequence[str] = (),
                   *, leaves: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, dict[str, torch.Tensor]]:
    """One forward pass (graph kept): (B,) target scores, (B,) classes (None unless a class target) and the live
    outputs of `layers` (for Grad-CAM). A predicted-class target takes its argmax from this same pass.
    `leaves=True` makes the `layers` outputs new autograd leaves: the graph starts there (inputs need no grad)."""
    layers = tuple(layers)
    if target.layer is None and not layers:
        output = spec.run(inputs)
        scores = target.score(output, None)
        classes = output.detach().argmax(1) if target.predicted else target.classes
        return scores, classes, {}
    wanted = layers + ((target.layer,) if target.layer is not None else ())
    # A unit target needs nothing past its layer (and the Grad-CAM layer): the pass may stop there.
    with capture(spec.module, list(dict.fromkeys(wanted)), detach=False, stop=target.unit is not None,
                 leaves=layers if leaves else ()) as cap:
        with spec.size_errors(inputs):
            output = cap.run(inputs)
        scores = target.score(output, cap)
        found = {name: cap[name] for name in layers}
    classes = output.detach().argmax(1) if target.predicted else target.classes
    return scores, classes, found


def clean_pass(spec: ModelSpec, inputs: torch.Tensor, target: ResolvedTarget,
               ) -> tuple[torch.Tensor, torch.Tensor | None, ResolvedTarget]:
    """One no-grad forward on the inputs themselves: (B,) scores, (B,) classes or None, and the target with a
    predicted class fixed to these classes (for methods whose gradient passes run on other points: noisy copies,
    interpolation paths)."""
    with torch.inference_mode():
        scores, classes, _ = forward_target(spec, inputs, target)
    scores = scores.clone()  # out of inference mode
    if target.predicted:
        classes = classes.clone()
        target = _class_target(spec, classes, "predicted class")
    return scores, classes, target


def select_target(spec: ModelSpec, target: ResolvedTarget, index: torch.Tensor) -> ResolvedTarget:
    """The same target for a batch built from inputs `index` (K,) of the original batch (class targets are
    gathered; unit and callable targets do not depend on the batch)."""
    if target.classes is None:
        return target
    return _class_target(spec, target.classes[index.to(target.classes.device)], target.description)


def target_param(target: Target) -> Any:
    """A JSON-able record of the target as the user gave it (for recipes)."""
    if target is None:
        return "predicted"
    if isinstance(target, (int, str)):
        return target
    if isinstance(target, Unit):
        return str(target)
    if isinstance(target, torch.Tensor):
        return target.flatten().tolist()
    if callable(target):
        return f"callable {getattr(target, '__name__', type(target).__name__)}"
    return list(target)


def abs_max(attributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): the largest |value| over channels (Simonyan et al.'s saliency map)."""
    return attributions.abs().amax(1)


def make_attribution(spec: ModelSpec, method: str, *, attributions: torch.Tensor, map: torch.Tensor,
                     inputs: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor | None, target: Target,
                     params: dict[str, Any], extras: dict[str, torch.Tensor] | None = None) -> "Attribution":
    """Build the result (everything detached) with its recipe: model, method, target as given, options, and the
    arithmetic the network ran in (`precision`, "float32" unless the method says otherwise)."""
    recipe = Recipe(kind=method, model=spec.describe(),
                    params={"method": method, "target": target_param(target), "precision": "float32", **params})
    return Attribution(attributions=attributions.detach().contiguous(), map=map.detach().contiguous(),
                       inputs=inputs.detach(),
                       scores=scores.detach(), classes=None if classes is None else classes.detach(),
                       method=method, recipe=recipe,
                       extras={k: v.detach() for k, v in (extras or {}).items()}, spec=spec)


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

    def to_image(self, index: int = 0, *, view: str = "heatmap", overlay: bool = True, **kwargs: Any):
        """Input `index` as a PIL image: `view="heatmap"` draws the map over the image (or alone, `overlay=False`);
        `view="rgb"` draws the signed attributions as a colour image around grey, as Springenberg et al. and Zeiler &
        Fergus show gradients (for the gradient methods). Options: `render.overlay.attribution_image`."""
        from ..render.overlay import attribution_image

        return attribution_image(self, index, view=view, overlay=overlay, **kwargs)

    def save_npz(self, path: str | Path) -> Path:
        """Write the tensors (`attributions`, `map`, `inputs`, `scores`, `classes`, `extras_*`) and the recipe
        (JSON string under `recipe`) to a compressed `.npz`; read back with `numpy.load`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **self.arrays(), recipe=np.array(self.recipe.to_json()))
        return path

    def arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """The result's tensors as numpy arrays keyed `prefix + name` (what `save_npz` writes)."""
        out = {f"{prefix}{name}": getattr(self, name).detach().cpu().numpy()
               for name in ("attributions", "map", "inputs", "scores")}
        if self.classes is not None:
            out[f"{prefix}classes"] = self.classes.detach().cpu().numpy()
        for key, value in self.extras.items():
            out[f"{prefix}extras_{key}"] = value.detach().cpu().numpy()
        return out
