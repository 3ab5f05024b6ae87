"""Objectives: what a feature visualization maximizes, with real algebra.

An `Objective` maps the activations of the layers it needs (a dict `{layer: tensor}`, with the model's output under
the key `OUTPUT`) to one value per batch item, shape (B,). Objectives add, subtract, negate and scale by numbers
(`0.5 * channel("features.3", 3) - channel("features.3", 7)`); anything else raises `TypeError`.

Batched objectives render many units in one optimization: `channel(layer, [0, 1, ..., 63])` assigns channel i to
batch item i, so a whole layer renders in one run. Terms with a single unit apply to every batch item.

A layer is a `named_modules()` path, a module of the model, or a `convscope.layers.Layer`; `Objective.bind(spec)`
(which `render` calls once) resolves modules to paths and class names to indices.

Primitives (all values are means over space unless a position is given), each a small `Term` class:

- `neuron(layer, ch, row=None, col=None)`: one unit at one position (the feature map's centre by default);
- `channel(layer, ch)`: the mean of one channel;
- `layer(layer)`: the mean of squared activations of the whole layer (DeepDream);
- `class_logit(c)`: the pre-softmax score of class `c` (an index or a class name);
- `direction(layer, vector)`: the mean over positions of the dot product of the activation with `vector` (C,);
- `diversity(layer)`: minus the mean cosine similarity of an item's Gram matrix to the other items' (Lucid);
- `custom(layers, fn, name)`: any function of the activations, for new objectives (inversion, ...).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import TargetError, UnitOutOfRangeError

__all__ = ["Objective", "Term", "OUTPUT", "neuron", "channel", "layer", "class_logit", "direction", "diversity",
           "custom", "as_objective"]

OUTPUT = ""
"""The key of the model's output (logits) in the activations an objective receives."""

Indices = int | Sequence[int]
LayerArg = Any  # str | nn.Module | convscope.layers.Layer (resolved to its path by `bind`)


def _as_list(value: Indices | None) -> tuple[int, ...] | int | None:
    if value is None or isinstance(value, numbers.Integral):
        return None if value is None else int(value)
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, range):
        value = list(value)
    values = tuple(int(v) for v in value)
    if not values:
        raise ValueError("an empty list of units renders nothing")
    return values


def _check_layer(layer: Any) -> LayerArg:
    from ..layers import Layer

    if not isinstance(layer, (str, nn.Module, Layer)):
        raise TypeError(f"a layer is a named_modules() path (str), a module or a Layer, got {type(layer).__name__}")
    return layer


def _name(layer: LayerArg) -> str:
    """The path of a bound layer (a str after `bind`; a `Layer` names itself)."""
    if isinstance(layer, str):
        return layer
    if isinstance(layer, nn.Module):
        raise TypeError(f"the objective's layer is a {type(layer).__name__} module: bind the objective to its model "
                        "first (render does)")
    return layer.name


def _shown(layer: LayerArg) -> str:
    return layer if isinstance(layer, str) else type(layer).__name__ if isinstance(layer, nn.Module) else layer.name


def _where(layer: str) -> str:
    return "the model output" if layer == OUTPUT else f"layer {layer!r}"


@dataclass(frozen=True, eq=False)
class Term:
    """One primitive objective on one layer: (B,) values from `acts[layer]`. Subclasses override `__call__` and what
    differs (labels, range checks, batching); a new objective is a new small subclass."""

    layer: LayerArg

    @property
    def layers(self) -> tuple[str, ...]:
        return (_name(self.layer),)

    @property
    def batch(self) -> int | None:
        """Batch items this term needs (one unit per item), or None when it applies to any batch."""
        return None

    couples_batch = False  # items influence each other (never split into chunks)

    def channels(self, layer: str) -> frozenset[int] | None:
        """The channels of `layer` this term reads; None: the whole layer."""
        return None

    def take(self, items: Sequence[int]) -> Term:
        return self

    def bind(self, model: nn.Module | None) -> Term:
        """The term with its layer resolved to a path in `model` (a module or `Layer` given as the layer)."""
        if model is None or isinstance(self.layer, str):
            return self
        from ..layers import resolve

        return replace(self, layer=resolve(model, self.layer).name)

    def check(self, shapes: Mapping[str, torch.Size]) -> None:
        """Raise `UnitOutOfRangeError`/`TargetError` if the term does not fit layers of these output shapes."""

    def label(self, i: int) -> str:
        raise NotImplementedError

    def describe(self) -> str:
        return self.label(0)

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, eq=False)
class _Units(Term):
    """A term that picks one unit (channel or class) per item: `units` is an int (every item) or a tuple (item i)."""

    units: Any = None
    noun = "channel"

    @property
    def batch(self) -> int | None:
        return len(self.units) if isinstance(self.units, tuple) else None

    def channels(self, layer: str) -> frozenset[int] | None:
        return frozenset(self.units if isinstance(self.units, tuple) else (self.units,))

    def take(self, items: Sequence[int]) -> Term:
        return replace(self, units=tuple(self.units[i] for i in items)) if isinstance(self.units, tuple) else self

    def check(self, shapes: Mapping[str, torch.Size]) -> None:
        name = _name(self.layer)
        shape = shapes[name]
        if len(shape) < 2:
            raise UnitOutOfRangeError(f"{_where(name)} has output shape {tuple(shape)}: it has no channels")
        n = shape[1]
        units = self.units if isinstance(self.units, tuple) else (self.units,)
        bad = [u for u in units if not 0 <= u < n]
        if bad:
            raise UnitOutOfRangeError(f"{self.noun} {bad[0]} is out of range; {_where(name)} has "
                                      f"{self.noun}s 0..{n - 1}")

    def describe(self) -> str:
        return f"{_shown(self.layer)}:{list(self.units)}" if isinstance(self.units, tuple) else self.label(0)

    def picked(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B,) or (B, H, W): each item's unit."""
        a = acts[_name(self.layer)]
        b = a.shape[0]
        index = torch.as_tensor(self.units, device=a.device)
        index = index.expand(b) if index.ndim == 0 else index
        if index.shape[0] != b:
            raise ValueError(f"objective {self.describe()!r} has {index.shape[0]} units but the batch has {b} items")
        return a[torch.arange(b, device=a.device), index]

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        picked = self.picked(acts)
        return picked if picked.ndim == 1 else picked.flatten(1).mean(1)


@dataclass(frozen=True, eq=False)
class Channel(_Units):
    """The mean over space of one channel per item."""

    def label(self, i: int) -> str:
        unit = self.units[i] if isinstance(self.units, tuple) else self.units
        return f"{_shown(self.layer)}:{unit}"


@dataclass(frozen=True, eq=False)
class Neuron(_Units):
    """One channel at one position (`row`, `col`; the centre where None) per item; a (B, F) layer has no position."""

    row: int | None = None
    col: int | None = None

    def label(self, i: int) -> str:
        unit = self.units[i] if isinstance(self.units, tuple) else self.units
        row = "c" if self.row is None else self.row
        col = "c" if self.col is None else self.col
        return f"{_shown(self.layer)}:{unit}@{row},{col}"

    def check(self, shapes: Mapping[str, torch.Size]) -> None:
        super().check(shapes)
        name = _name(self.layer)
        shape = shapes[name]
        if len(shape) == 4:
            for axis, value, size in (("row", self.row, shape[2]), ("col", self.col, shape[3])):
                if value is not None and not 0 <= value < size:
                    raise UnitOutOfRangeError(f"{axis} {value} is out of range; {_where(name)} has {axis}s "
                                              f"0..{size - 1}")

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        picked = self.picked(acts)
        if picked.ndim == 1:
            return picked
        row = picked.shape[1] // 2 if self.row is None else self.row
        col = picked.shape[2] // 2 if self.col is None else self.col
        return picked[:, row, col]


@dataclass(frozen=True, eq=False)
class ClassLogit(_Units):
    """The pre-softmax score of one class per item (names resolved by `bind` with the spec's class names)."""

    noun = "class"

    def label(self, i: int) -> str:
        unit = self.units[i] if isinstance(self.units, tuple) else self.units
        return f"class {unit}"

    def describe(self) -> str:
        return f"class {list(self.units)}" if isinstance(self.units, tuple) else self.label(0)

    def channels(self, layer: str) -> frozenset[int] | None:
        return None

    def bind_classes(self, spec: Any) -> Term:
        if isinstance(self.units, tuple):
            return replace(self, units=tuple(spec.class_index(u) for u in self.units))
        return replace(self, units=spec.class_index(self.units))


@dataclass(frozen=True, eq=False)
class LayerL2(Term):
    """The mean squared activation of the whole layer (DeepDream)."""

    def label(self, i: int) -> str:
        return f"{_shown(self.layer)} (L2)"

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return acts[_name(self.layer)].pow(2).flatten(1).mean(1)


@dataclass(frozen=True, eq=False)
class Direction(Term):
    """The mean over positions of <activation, vector>; `vector` (C,) for every item or (B, C), row i for item i."""

    vector: torch.Tensor | None = None

    @property
    def batch(self) -> int | None:
        return self.vector.shape[0] if self.vector.ndim == 2 else None

    def take(self, items: Sequence[int]) -> Term:
        return replace(self, vector=self.vector[list(items)]) if self.vector.ndim == 2 else self

    def check(self, shapes: Mapping[str, torch.Size]) -> None:
        name = _name(self.layer)
        shape = shapes[name]
        if len(shape) < 2:
            raise UnitOutOfRangeError(f"{_where(name)} has output shape {tuple(shape)}: it has no channels")
        if self.vector.shape[-1] != shape[1]:
            raise TargetError(f"direction vector has {self.vector.shape[-1]} entries; {_where(name)} has "
                              f"{shape[1]} channels")

    def label(self, i: int) -> str:
        return f"{_shown(self.layer)} dir" + (f" {i}" if self.batch else "")

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = acts[_name(self.layer)]
        vec = self.vector.to(a.device, a.dtype)
        vec = vec.expand(a.shape[0], -1) if vec.ndim == 1 else vec
        return torch.einsum("bc...,bc->b...", a, vec).flatten(1).mean(1)


@dataclass(frozen=True, eq=False)
class Diversity(Term):
    """Minus the mean cosine similarity of each item's Gram matrix to the other items' (Olah et al. 2017)."""

    couples_batch = True

    def label(self, i: int) -> str:
        return f"diversity {_shown(self.layer)}"

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        a = acts[_name(self.layer)]
        b, c = a.shape[:2]
        if b < 2:
            return a.new_zeros(b)
        flat = a.reshape(b, c, -1)
        gram = flat @ flat.transpose(1, 2) / flat.shape[2]
        gram = torch.nn.functional.normalize(gram.reshape(b, -1), dim=1)
        sim = gram @ gram.T
        return -(sim.sum(1) - sim.diagonal()) / (b - 1)


@dataclass(frozen=True, eq=False)
class Custom(Term):
    """Any function `fn(acts) -> (B,)` of the activations of `names` (`OUTPUT` for the model output)."""

    names: tuple[str, ...] = ()
    fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None
    title: str = ""

    @property
    def layers(self) -> tuple[str, ...]:
        return self.names

    def bind(self, model: nn.Module | None) -> Term:
        return self

    def label(self, i: int) -> str:
        return self.title

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(acts)


class Objective:
    """A weighted sum of primitive terms; call it on activations to get (B,) values.

    Attributes:
        layers: the layers the objective reads (`OUTPUT` = "" for the model output), in first-use order.
        batch: the number of batch items a batched objective needs, or `None` if it fits any batch.
        couples_batch: True when items influence each other (diversity): such objectives are never split.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: Sequence[tuple[float, Term]]):
        self.terms = tuple(terms)
        sizes = {t.batch for _, t in self.terms if t.batch is not None}
        if len(sizes) > 1:
            raise ValueError(f"cannot combine batched objectives of different sizes {sorted(sizes)}")

    # -- algebra ----------------------------------------------------------------------------------------------
    def __add__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return Objective(self.terms + other.terms)

    def __sub__(self, other: Objective) -> Objective:
        if not isinstance(other, Objective):
            return NotImplemented
        return self + (-other)

    def __neg__(self) -> Objective:
        return self * -1.0

    def __mul__(self, factor: float) -> Objective:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return NotImplemented
        return Objective([(w * float(factor), t) for w, t in self.terms])

    __rmul__ = __mul__

    def __truediv__(self, factor: float) -> Objective:
        if isinstance(factor, bool) or not isinstance(factor, numbers.Real):
            return NotImplemented
        return self * (1.0 / float(factor))

    def __radd__(self, other: Any) -> Objective:
        if other == 0 and not isinstance(other, bool):  # so sum([...]) works
            return self
        return NotImplemented

    def __bool__(self) -> bool:
        raise TypeError("an Objective has no truth value; compare its values after render()")

    # -- evaluation ---------------------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for _, t in self.terms:
            for name in t.layers:
                seen.setdefault(name, None)
        return tuple(seen)

    @property
    def batch(self) -> int | None:
        for _, t in self.terms:
            if t.batch is not None:
                return t.batch
        return None

    def channels(self, layer: str) -> frozenset[int] | None:
        """The channels of `layer` the objective reads (channel and neuron terms), or None when it reads the whole
        layer (layer, direction, diversity and custom terms)."""
        found: set[int] = set()
        for _, t in self.terms:
            if layer not in t.layers:
                continue
            mine = t.channels(layer)
            if mine is None:
                return None
            found.update(mine)
        return frozenset(found)

    @property
    def couples_batch(self) -> bool:
        return any(t.couples_batch for _, t in self.terms)

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Activations `{layer: (B, C[, H, W])}` -> values (B,) (with gradient if the activations have one)."""
        total = None
        for w, t in self.terms:
            value = t(acts) * w
            total = value if total is None else total + value
        return total

    def take(self, items: Sequence[int]) -> Objective:
        """The objective for a subset of batch items (for rendering a batched objective in chunks)."""
        return Objective([(w, t.take(items)) for w, t in self.terms])

    def bind(self, spec: Any) -> Objective:
        """Resolve layers given as modules (in `spec.module`) to paths and class names with `spec.class_index`."""
        if spec is None:
            return self
        model = getattr(spec, "module", spec if isinstance(spec, nn.Module) else None)
        terms = []
        for w, t in self.terms:
            t = t.bind(model)
            if isinstance(t, ClassLogit) and hasattr(spec, "class_index"):
                t = t.bind_classes(spec)
            terms.append((w, t))
        return Objective(terms)

    def check(self, shapes: Mapping[str, torch.Size]) -> None:
        """Raise `UnitOutOfRangeError`/`TargetError` if a unit does not exist in layers of these output shapes."""
        for _, t in self.terms:
            t.check(shapes)

    def labels(self, n: int) -> list[str]:
        """A short label per batch item (the batched term's unit, or the description)."""
        batched = [t for _, t in self.terms if t.batch is not None]
        if batched and len(self.terms) == 1:
            return [batched[0].label(i) for i in range(n)]
        text = str(self)
        if batched:
            return [f"{batched[0].label(i)} +" for i in range(n)]
        return [text if len(text) < 40 else text[:37] + "..." for _ in range(n)]

    def __repr__(self) -> str:
        parts = []
        for w, t in self.terms:
            name = t.describe()
            parts.append(name if w == 1 else f"-{name}" if w == -1 else f"{w:g}*{name}")
        return " + ".join(parts).replace("+ -", "- ")

    __str__ = __repr__


def _one(term: Term) -> Objective:
    return Objective([(1.0, term)])


def neuron(layer: LayerArg, ch: Indices, row: int | None = None, col: int | None = None) -> Objective:
    """The activation of channel `ch` at (`row`, `col`) of `layer`'s output; the centre (H // 2, W // 2) by default.

    `layer` is a path, a module of the model or a `Layer`. `ch` may be a list: channel `ch[i]` for batch item i.
    For a (B, F) layer the position is ignored.
    """
    return _one(Neuron(_check_layer(layer), _as_list(ch), row, col))


def channel(layer: LayerArg, ch: Indices) -> Objective:
    """The mean over space of channel `ch` of `layer`'s output (a path, module or `Layer`); a list assigns channel
    `ch[i]` to batch item i."""
    return _one(Channel(_check_layer(layer), _as_list(ch)))


def layer(layer: LayerArg) -> Objective:
    """The mean squared activation of the whole layer (DeepDream's L2 objective)."""
    return _one(LayerL2(_check_layer(layer)))


def class_logit(c: int | str | Sequence[int | str]) -> Objective:
    """The pre-softmax score of class `c` (an index or a class name); a list assigns class `c[i]` to item i."""
    units = c if isinstance(c, (numbers.Integral, str)) else tuple(c)
    return _one(ClassLogit(OUTPUT, units if not isinstance(units, numbers.Integral) else int(units)))


def direction(layer: LayerArg, vector: torch.Tensor | Sequence[float]) -> Objective:
    """The mean over positions of <activation, vector>; `vector` (C,) for every item, or (B, C) one per item."""
    vec = torch.as_tensor(vector, dtype=torch.float32).detach()
    if vec.ndim not in (1, 2):
        raise ValueError(f"direction vector must have shape (C,) or (B, C), got {tuple(vec.shape)}")
    return _one(Direction(_check_layer(layer), vec))


def diversity(layer: LayerArg) -> Objective:
    """Push batch items apart: minus the mean cosine similarity of each item's Gram matrix (channels x channels)
    of `layer` to those of the other items (Olah et al. 2017). Usually weighted, e.g. `obj + 1e-2 * diversity(l)`."""
    return _one(Diversity(_check_layer(layer)))


def custom(layers: str | Sequence[str], fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], name: str) -> Objective:
    """A new objective: `fn(acts) -> (B,)` reads `acts[layer]` for each of `layers` (`OUTPUT` for the output)."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    return _one(Custom(layers[0] if layers else OUTPUT, layers, fn, name))


def as_objective(value: Any) -> Objective:
    """An `Objective`, or a unit string `"LAYER:CH"` / `"LAYER:CH@ROW,COL"` / `"LAYER"` (channel, neuron, layer)."""
    if isinstance(value, Objective):
        return value
    if isinstance(value, str):
        from ..layers import parse_unit

        unit = parse_unit(value)
        if unit.channel is None:
            return layer(unit.layer)
        if unit.row is None:
            return channel(unit.layer, unit.channel)
        return neuron(unit.layer, unit.channel, unit.row, unit.col)
    raise TypeError(f"expected an Objective or a unit string, got {type(value).__name__}")
