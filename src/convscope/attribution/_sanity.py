"""The model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

On a deep copy of the model (the user's model is never touched), the layers with parameters are randomized one by
one from the top (the last layer to run) down, cascading; after chosen numbers of layers the method is run again for
the same targets and its map is compared with the original map by Spearman rank correlation, per input. A map that
still looks the same when the network that produced it has been destroyed says little about the network.

The verdict reads the whole cascade, not only its end: at each checkpoint the similarity is the mean over inputs of
|rho| (a map that turns into its negative, rho near -1, is as much determined by the image as one that stays the
same; Adebayo et al. report absolute rank correlations), and the check is flagged when the similarity exceeds
`threshold` (0.5 by default) at ANY checkpoint: a map that survives the randomization of the top layers (the class
weights first) does not explain the class, even if randomizing the first convolutions finally changes it. The
paper's failing methods, guided backprop and guided Grad-CAM, stay high through the top layers, while gradients
fall near 0 as soon as the logits are randomized.

Randomizing a layer replaces each of its parameter tensors by Gaussian noise with the tensor's own mean and standard
deviation (seeded), which keeps activations on their usual scale; buffers (batch-norm statistics) are kept.
Correlations of a constant map (e.g. an all-zero Grad-CAM) count as 0.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import OptionError
from ..hooks import frozen, record_calls
from ..models import ModelSpec
from ..results import Recipe, ResultMixin
from ._core import Attribution, Target, as_spec, check_inputs, target_param

__all__ = ["RandomizationCheck", "randomization", "spearman"]


@dataclass(frozen=True)
class RandomizationCheck(ResultMixin):
    """Result of the cascading randomization check.

    Attributes:
        method: the attribution method checked.
        layers: (K,) the last layer randomized at each checkpoint (top first).
        depth: (K,) how many layers were randomized at each checkpoint.
        correlations: (K, B) Spearman correlation of each input's map with its original map (signed).
        original: (B, H, W) the maps of the intact model; `maps`: (K, B, H, W) after each checkpoint.
        threshold: the flag threshold; `flagged`: the similarity (`curve`) exceeds it at some checkpoint.
    """

    method: str
    layers: list[str]
    depth: list[int]
    correlations: torch.Tensor
    original: torch.Tensor
    maps: torch.Tensor
    threshold: float
    flagged: bool
    recipe: Recipe

    @property
    def curve(self) -> torch.Tensor:
        """(K,) the cascade curve: mean over inputs of |Spearman rho| at each checkpoint (top first)."""
        return self.correlations.abs().mean(1)

    @property
    def final(self) -> float:
        """Mean (signed) correlation over inputs after every layer was randomized."""
        return float(self.correlations[-1].mean())

    @property
    def worst(self) -> float:
        """The largest similarity (mean |rho|) anywhere in the cascade: what the verdict compares with `threshold`."""
        return float(self.curve.max())

    @property
    def survives_to(self) -> str | None:
        """The deepest layer whose randomization (with every layer above it) the map survives (similarity above
        `threshold`), or None when it survives none."""
        above = [k for k, value in enumerate(self.curve.tolist()) if value > self.threshold]
        return self.layers[above[-1]] if above else None

    def to_image(self, index: int = 0, **kwargs: Any):
        """Input `index`'s maps along the cascade with their rho, the cascade curve and the verdict."""
        from ..render.trust import randomization_strip

        return randomization_strip(self, index, **kwargs)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (ties get average ranks); 0 when either map is constant."""
    from scipy.stats import spearmanr  # here: scipy.stats costs 0.6 s of every command's start-up

    x, y = a.detach().double().flatten().cpu().numpy(), b.detach().double().flatten().cpu().numpy()
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(spearmanr(x, y).statistic)


def _layers_top_down(module: nn.Module, x: torch.Tensor) -> list[str]:
    """Paths of modules owning parameters, in reverse order of their first call in a forward pass."""
    with frozen(module) as net, torch.inference_mode(), record_calls(net) as calls:
        net(x[:1])
    owners = {name for name, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))}
    order = list(dict.fromkeys(name for name, _ in calls if name in owners))
    return order[::-1]


@torch.no_grad()
def _randomize(module: nn.Module, generator: torch.Generator) -> None:
    for p in module.parameters(recurse=False):
        values = p.detach().double()
        mean = float(values.mean())
        std = float(values.std()) if values.numel() > 1 else abs(mean)
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        p.copy_((mean + std * noise).to(p.device, p.dtype))


def _checkpoints(count: int, checkpoints: int | None) -> list[int]:
    if checkpoints is None:
        return list(range(1, count + 1))
    if checkpoints < 1:
        raise OptionError(f"checkpoints must be at least 1 (or None for every layer), got {checkpoints}")
    if checkpoints == 1:
        return [count]  # full randomization only
    return sorted({int(round(v)) for v in np.linspace(1, count, min(checkpoints, count))})


def randomization(model: ModelSpec | nn.Module | str, method: str | Callable[..., Attribution],
                  inputs: torch.Tensor, target: Target = None, *, checkpoints: int | None = 6, seed: int = 0,
                  threshold: float = 0.5, options: Mapping[str, Any] | None = None) -> RandomizationCheck:
    """Cascading model-parameter randomization check for `method` on `inputs`.

    Args:
        model: as for the attribution methods; only a deep copy is randomized.
        method: a name from `convscope.attribution.METHODS` ("saliency", "guided", ...) or a method function.
        inputs: (B, C, H, W) model inputs.
        target: as for the methods; the randomized models explain the SAME classes as the original (its prediction
            is fixed first), not their own new predictions.
        checkpoints: how many points of the cascade to evaluate, evenly spaced from the top layer to all layers
            (always including full randomization); None evaluates after every layer.
        seed: seeds the random parameters.
        threshold: flag when the similarity (mean |rho| over inputs) exceeds it at any checkpoint.
        options: keyword options for the method (e.g. `{"layer": "layer4"}`, `{"samples": 10, "seed": 1}`).

    Returns a `RandomizationCheck` with correlations (K, B) and the maps.
    """
    from . import METHODS

    if isinstance(method, str):
        if method not in METHODS:
            raise OptionError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        name, function = method, METHODS[method]
    else:
        name, function = getattr(method, "__name__", "method"), method
    options = dict(options or {})
    spec = as_spec(model)
    x = check_inputs(spec, inputs)
    work = dataclasses.replace(spec, module=copy.deepcopy(spec.module))
    original = function(work, x, target, **options)
    fixed = original.classes if original.classes is not None else target
    layers = _layers_top_down(work.module, x)
    if not layers:
        raise OptionError(f"model {spec.name!r} has no layer with parameters to randomize")
    generator = torch.Generator().manual_seed(seed)
    points = _checkpoints(len(layers), checkpoints)
    maps, correlations, done = [], [], 0
    for depth in points:
        for path in layers[done:depth]:
            _randomize(work.module.get_submodule(path), generator)
        done = depth
        result = function(work, x, fixed, **options)
        maps.append(result.map)
        correlations.append([spearman(a, b) for a, b in zip(original.map, result.map)])
    corr = torch.tensor(correlations, dtype=torch.float64)
    recipe = Recipe(kind="randomization", model=spec.describe(),
                    params={"method": name, "target": target_param(target), "checkpoints": checkpoints, "seed": seed,
                            "threshold": threshold, **{k: str(v) for k, v in options.items()}})
    flagged = bool((corr.abs().mean(1) > threshold).any())
    return RandomizationCheck(name, [layers[d - 1] for d in points], points, corr, original.map,
                              torch.stack(maps), threshold, flagged, recipe)
