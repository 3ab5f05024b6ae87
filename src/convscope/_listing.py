"""Listing a model's layers: every addressable module call with its type, output shape, parameters and receptive
field (re-exported by `convscope.layers`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .receptive import Method, ReceptiveField, fields_for_calls, module_calls

__all__ = ["LayerInfo", "list_layers"]


@dataclass(frozen=True)
class LayerInfo:
    """One row of `convscope layers`: one call of one module.

    Attributes:
        name: the address to use everywhere (`"layer4.1.conv2"`; `"layer1.0.relu#1"` for the second call of a module
            that runs more than once per forward pass).
        path: the `named_modules()` path (`name` without `#k`).
        type: the module's class name.
        shape: output shape without the batch axis, (C, H, W) or (F,); `None` for non-tensor outputs and for
            modules that did not run in the probe pass.
        params: parameters of the module including its children (the same on every call row of a module).
        calls: how many times the module ran in the probe pass (0: it did not run, so it is not addressable).
        receptive_field: the field at the input, or `None` (not computed, not run, or not input-dependent).
    """

    name: str
    path: str
    type: str
    shape: tuple[int, ...] | None
    params: int
    calls: int
    receptive_field: ReceptiveField | None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["shape"] = list(self.shape) if self.shape is not None else None
        return out


def list_layers(
    model: Any,
    *,
    input_size: tuple[int, int] | None = None,
    receptive: Method | None = "auto",
    samples: int = 3,
    seed: int = 0,
) -> list[LayerInfo]:
    """Every submodule of `model` in `named_modules()` order, one row per call (`path#k` for reused modules).

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string (through `convscope.models.load`).
        input_size: (H, W) of the probe input; default the model's `input_size`.
        receptive: how to compute receptive fields ("auto", "analytic", "measured"; see `convscope.receptive`),
            or `None` to skip them.
        samples, seed: random inputs for measured receptive fields.

    One probe forward pass (eval mode, no gradients, the model left as found) gives shapes and call counts.
    """
    from .models import load

    spec = load(model)
    module = spec.module
    example = spec.example_input()
    if input_size is not None:
        example = example.new_zeros((1, spec.channels, *input_size))
    calls = module_calls(module, example)
    fields: dict[str, ReceptiveField] = {}
    if receptive is not None and example.ndim >= 3:
        fields = fields_for_calls(module, example, calls, [c[0] for c in calls], method=receptive,
                                  samples=samples, seed=seed)
    by_path: dict[str, list[tuple[str, Any]]] = {}
    for name, path, _, shape in calls:
        by_path.setdefault(path, []).append((name, shape))
    rows = []
    for path, sub in module.named_modules():
        if not path:
            continue
        params = sum(p.numel() for p in sub.parameters())
        runs = by_path.get(path, [])
        if not runs:
            rows.append(LayerInfo(path, path, type(sub).__name__, None, params, 0, None))
        for name, shape in runs:
            rows.append(LayerInfo(name, path, type(sub).__name__, tuple(shape[1:]) if shape is not None else None,
                                  params, len(runs), fields.get(name)))
    return rows
