"""Feature evolution: the same unit rendered from several training checkpoints (Zeiler & Fergus 2014, fig. 4).

Zeiler & Fergus saw lower layers settle within a few epochs and upper layers only much later. Every checkpoint is
rendered with the same `render` options and the same seed, so the starting noise and the random transforms are
identical and the differences between the pictures come from the weights alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConvscopeError, InputShapeError
from ..layers import Unit, parse_unit
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from .objectives import Objective, as_objective
from .render import render

__all__ = ["Evolution", "evolution", "checkpoint_label"]

Checkpoint = str | Path | nn.Module | ModelSpec

_EPOCH = re.compile(r"epoch[_-]?(\d+)", re.IGNORECASE)


def checkpoint_label(checkpoint: Checkpoint, spec: ModelSpec) -> str:
    """A short name: "epoch 3" for `model.epoch3.safetensors` (or a file recording `epochs`), else the file name."""
    if isinstance(checkpoint, (str, Path)):
        match = _EPOCH.search(Path(str(checkpoint)).name)
        if match:
            return f"epoch {int(match[1])}"
        epochs = spec.source.get("epochs")
        if isinstance(epochs, int) or (isinstance(epochs, str) and epochs.isdigit()):
            return f"epoch {int(epochs)}"
        return Path(str(checkpoint)).name
    return spec.name


@dataclass(frozen=True)
class Evolution(ResultMixin):
    """One unit across training.

    Attributes:
        images: (N, C, H, W) the rendering from each checkpoint, in the order given, pixels in [0, 1].
        values: (N,) the objective each checkpoint's rendering reaches in that checkpoint.
        labels: N short names ("epoch 3", file name, or model name).
        traces: (N, steps) each checkpoint's objective along its optimization.
        recipe: the checkpoints, unit, render options, seed, versions (and each checkpoint's model description).
    """

    images: torch.Tensor
    values: torch.Tensor
    labels: list[str]
    traces: torch.Tensor
    recipe: Recipe

    def to_image(self, *, cell: int | None = None):
        """A strip, one tile per checkpoint, labelled with its name and the objective value reached."""
        from ..render.core import grid, label, to_pil

        cell = cell or max(128, max(self.images.shape[-2:]))
        texts = [f"{name}: {float(v):.3g}" for name, v in zip(self.labels, self.values)]
        strip = grid([to_pil(img) for img in self.images], columns=len(texts), labels=texts, cell=cell)
        return label(strip, f"{self.recipe.params['objective']} across training (same seed)", size=13, where="top")


def evolution(
    checkpoints: Sequence[Checkpoint],
    unit: str | Unit | Objective,
    *,
    seed: int = 0,
    steps: int = 256,
    arch: str | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    **render_options: Any,
) -> Evolution:
    """Render `unit` from every checkpoint with the same seed and options.

    Args:
        checkpoints: model strings or files (`model.epoch3.safetensors` written by `convscope train
            --checkpoint-every`), `nn.Module`s or `ModelSpec`s, in training order. They must share the
            architecture's input shape (channels and size).
        unit: `"LAYER:CH"`, `"LAYER:CH@ROW,COL"`, `"LAYER"`, a `Unit`, or any `Objective`.
        seed, steps, **render_options: passed to `featvis.render` unchanged for every checkpoint.
        arch, device: for loading checkpoint files (`convscope.models.load`), one at a time.
        progress: called with (checkpoints done, total) after each one.
    """
    if isinstance(checkpoints, (str, Path, nn.Module, ModelSpec)):
        checkpoints = [checkpoints]
    if not checkpoints:
        raise ConvscopeError("evolution needs at least one checkpoint")
    objective = unit if isinstance(unit, Objective) else as_objective(str(parse_unit(unit)))
    images, values, labels, traces, models = [], [], [], [], []
    shape = None
    recipe_params: dict[str, Any] = {}
    for i, checkpoint in enumerate(checkpoints):
        spec = load(checkpoint, arch=arch, device=device) if isinstance(checkpoint, (str, Path)) else load(checkpoint)
        if shape is None:
            shape = (spec.channels, *spec.input_size)
        elif (spec.channels, *spec.input_size) != shape:
            raise InputShapeError(f"checkpoint {checkpoint!s} takes inputs {(spec.channels, *spec.input_size)}"
                                  f", the first one {shape}: the checkpoints must come from one architecture")
        vis = render(spec, objective, seed=seed, steps=steps, **render_options)
        images.append(vis.images[0])
        values.append(vis.values[0])
        traces.append(vis.trace[:, 0])
        labels.append(checkpoint_label(checkpoint, spec))
        models.append(spec.describe())
        recipe_params = vis.recipe.params
        if progress is not None:
            progress(i + 1, len(checkpoints))
    recipe = Recipe(
        kind="evolution",
        model={"checkpoints": models},
        params={**recipe_params, "objective": str(objective), "seed": seed, "steps": steps,
                "checkpoints": [str(c) if isinstance(c, (str, Path)) else type(c).__name__ for c in checkpoints],
                "labels": labels},
    )
    length = min(t.shape[0] for t in traces)
    return Evolution(
        images=torch.stack(images).detach(),
        values=torch.stack(values).detach().cpu(),
        labels=labels,
        traces=torch.stack([t[:length] for t in traces]).detach().cpu(),
        recipe=recipe,
    )
