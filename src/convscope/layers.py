"""Addressing layers and units.

A layer is a `named_modules()` path (`"features.28"`, `"layer4.1.conv2"`), optionally with a call index for modules
that run more than once per forward pass (`"layer1.0.relu#1"`), or a module of the model; `resolve` turns either
into a `Layer` value once, at the public entry point. A unit is `LAYER:CHANNEL` or
`LAYER:CHANNEL@ROW,COL`. Unknown names raise `LayerNotFoundError` naming the closest paths; indices out of range
raise `UnitOutOfRangeError` naming the valid range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnitOutOfRangeError, UnitSyntaxError
from .hooks import get_module, module_path, split_call

__all__ = ["Unit", "Layer", "LayerLike", "parse_unit", "resolve", "resolve_layer", "check_unit", "layer_names",
           "LayerInfo", "list_layers"]

_UNIT = re.compile(r"^(?P<layer>[^:@\s]*?)(?::(?P<ch>-?\d+))?(?:@(?P<row>-?\d+),(?P<col>-?\d+))?$")


@dataclass(frozen=True)
class Unit:
    """One place in a network: a whole layer, one channel, or one channel at one spatial position.

    `channel=None` means the whole layer; `row`/`col` index the layer's output feature map (H, W) and are set together.
    """

    layer: str
    channel: int | None = None
    row: int | None = None
    col: int | None = None

    def __post_init__(self) -> None:
        if (self.row is None) != (self.col is None):
            raise UnitSyntaxError(f"unit {self}: give both row and col, or neither")
        if self.row is not None and self.channel is None:
            raise UnitSyntaxError(f"unit {self}: a position needs a channel (LAYER:CH@ROW,COL)")

    def __str__(self) -> str:
        text = self.layer
        if self.channel is not None:
            text += f":{self.channel}"
        if self.row is not None:
            text += f"@{self.row},{self.col}"
        return text


def parse_unit(text: str | Unit) -> Unit:
    """`"layer4.1.conv2:17@3,5"` -> `Unit("layer4.1.conv2", 17, 3, 5)`; `"features.3"` -> whole layer."""
    if isinstance(text, Unit):
        return text
    match = _UNIT.match(text.strip())
    if not match or not match.group("layer"):
        raise UnitSyntaxError(f"cannot read unit {text!r}; write LAYER, LAYER:CHANNEL or LAYER:CHANNEL@ROW,COL")
    ch, row, col = (match.group(g) for g in ("ch", "row", "col"))
    return Unit(
        match.group("layer"),
        None if ch is None else int(ch),
        None if row is None else int(row),
        None if col is None else int(col),
    )


def layer_names(model: nn.Module) -> list[str]:
    """Every addressable layer path of the model, in `named_modules()` order (the root `""` excluded)."""
    return [name for name, _ in model.named_modules() if name]


@dataclass(frozen=True, eq=False)
class Layer:
    """A layer resolved once, at a public entry point, and passed down as a value.

    `path` is the `named_modules()` path ("" is the model itself), `call` the call index for a module that runs more
    than once per forward pass (`None`: its only call), `module` the module of the model it was resolved in. Code
    below the entry point addresses the layer by `name` (`path` or `path#call`), which works on the frozen working
    copy too, never by re-parsing the user's string.
    """

    path: str
    call: int | None
    module: nn.Module

    @property
    def name(self) -> str:
        return self.path if self.call is None else f"{self.path}#{self.call}"

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and (self.path, self.call) == (other.path, other.call)

    def __hash__(self) -> int:
        return hash((self.path, self.call))


LayerLike = str | nn.Module | Layer


def resolve(model: nn.Module, layer: LayerLike) -> Layer:
    """A `Layer` for a path (with optional `#k`), a module of the model, or a `Layer` (checked against `model`'s
    paths). Unknown names raise `LayerNotFoundError` with the closest paths; a module that is not part of the model
    raises it too."""
    if isinstance(layer, Layer):
        return Layer(layer.path, layer.call, get_module(model, layer.path))
    if isinstance(layer, nn.Module):
        return Layer(module_path(model, layer), None, layer)
    if not isinstance(layer, str):
        raise TypeError(f"a layer is a named_modules() path, a module or a Layer, got {type(layer).__name__}")
    base, call = split_call(layer)
    return Layer(base, call, get_module(model, base))


def resolve_layer(model: nn.Module, layer: LayerLike) -> tuple[str, nn.Module]:
    """`(name, module)` of `resolve(model, layer)`, for callers that want the pair."""
    found = resolve(model, layer)
    return found.name, found.module


def check_unit(unit: Unit, shape: torch.Size | tuple[int, ...]) -> None:
    """Raise `UnitOutOfRangeError` if the unit does not exist in an output of `shape` (B, C[, H, W])."""
    if unit.channel is None:
        return
    if len(shape) < 2:
        raise UnitOutOfRangeError(f"layer {unit.layer!r} has output shape {tuple(shape)}: it has no channels")
    channels = shape[1]
    if not 0 <= unit.channel < channels:
        raise UnitOutOfRangeError(
            f"unit {unit}: channel {unit.channel} is out of range; layer {unit.layer!r} has channels 0..{channels - 1}"
        )
    if unit.row is None:
        return
    if len(shape) != 4:
        raise UnitOutOfRangeError(f"unit {unit}: layer {unit.layer!r} output {tuple(shape)} has no spatial positions")
    height, width = shape[2], shape[3]
    if not (0 <= unit.row < height and 0 <= unit.col < width):
        raise UnitOutOfRangeError(
            f"unit {unit}: position ({unit.row}, {unit.col}) is out of range; rows 0..{height - 1}, cols 0..{width - 1}"
        )


from ._listing import LayerInfo, list_layers  # noqa: E402  (listing needs hooks and receptive fields, not the reverse)
