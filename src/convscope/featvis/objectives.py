"""Objectives: what a feature visualization maximizes, with real algebra.

An `Objective` maps the activations of the layers it needs (a dict `{layer: tensor}`, with the model's output under
the key `OUTPUT`) to one value per batch item, shape (B,). Objectives add, subtract, negate and scale by numbers
(`0.5 * channel("features.3", 3) - channel("features.3", 7)`); anything else raises `TypeError`.

Batched objectives render many units in one optimization: `channel(layer, [0, 1, ..., 63])` assigns channel i to
batch item i, so a whole layer renders in one run. Terms with a single unit apply to every batch item.

Primitives (all values are means over space unless a position is given):

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

from ..errors import TargetError, UnitOutOfRangeError

__all__ = ["Objective", "OUTPUT", "neuron", "channel", "layer", "class_logit", "direction", "diversity", "custom",
           "as_objective"]

OUTPUT = ""
"""The key of the model's output (logits) in the activations an objective receives."""

Indices = int | Sequence[int]


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


@dataclass(frozen=True, eq=False)
class _Term:
    """One primitive objective. `units` is an int (same unit for every item) or a tuple (unit i for item i)."""

    kind: str
    layer: str
    units: Any = None
    row: Any = None
    col: Any = None
    vector: torch.Tensor | None = None
    fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor] | None = None
    extra_layers: tuple[str, ...] = ()
    name: str = ""

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer, *self.extra_layers) if self.kind != "custom" else self.extra_layers

    @property
    def batch(self) -> int | None:
        if isinstance(self.units, tuple):
            return len(self.units)
        if self.vector is not None and self.vector.ndim == 2:
            return self.vector.shape[0]
        return None

    def label(self, i: int) -> str:
        unit = self.units[i] if isinstance(self.units, tuple) else self.units
        if self.kind == "custom":
            return self.name
        if self.kind == "class":
            return f"class {unit}"
        if self.kind == "layer":
            return f"{self.layer} (L2)"
        if self.kind == "direction":
            return f"{self.layer} dir" + (f" {i}" if self.batch else "")
        if self.kind == "diversity":
            return f"diversity {self.layer}"
        where = "" if self.kind == "channel" else f"@{self.row if self.row is not None else 'c'},{self.col if self.col is not None else 'c'}"
        return f"{self.layer}:{unit}{where}"

    def take(self, items: Sequence[int]) -> _Term:
        if isinstance(self.units, tuple):
            return replace(self, units=tuple(self.units[i] for i in items))
        if self.vector is not None and self.vector.ndim == 2:
            return replace(self, vector=self.vector[list(items)])
        return self

    def bind(self, spec: Any) -> _Term:
        if self.kind != "class" or spec is None:
            return self
        if isinstance(self.units, tuple):
            return replace(self, units=tuple(spec.class_index(u) for u in self.units))
        return replace(self, units=spec.class_index(self.units))

    def check(self, shapes: Mapping[str, torch.Size]) -> None:
        if self.kind in ("custom", "layer", "diversity"):
            return
        shape = shapes[self.layer]
        where = "the model output" if self.layer == OUTPUT else f"layer {self.layer!r}"
        if len(shape) < 2:
            raise UnitOutOfRangeError(f"{where} has output shape {tuple(shape)}: it has no channels")
        n = shape[1]
        if self.kind == "direction":
            if self.vector.shape[-1] != n:
                raise TargetError(f"direction vector has {self.vector.shape[-1]} entries; {where} has {n} channels")
            return
        units = self.units if isinstance(self.units, tuple) else (self.units,)
        bad = [u for u in units if not 0 <= u < n]
        if bad:
            noun = "class" if self.kind == "class" else "channel"
            raise UnitOutOfRangeError(f"{noun} {bad[0]} is out of range; {where} has {noun}s 0..{n - 1}")
        if self.kind == "neuron" and len(shape) == 4:
            for axis, value, size in (("row", self.row, shape[2]), ("col", self.col, shape[3])):
                if value is not None and not 0 <= value < size:
                    raise UnitOutOfRangeError(f"{axis} {value} is out of range; {where} has {axis}s 0..{size - 1}")

    def __call__(self, acts: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.kind == "custom":
            return self.fn(acts)
        a = acts[self.layer]
        b = a.shape[0]
        if self.kind == "layer":
            return a.pow(2).flatten(1).mean(1)
        if self.kind == "diversity":
            return _diversity(a)
        if self.kind == "direction":
            vec = self.vector.to(a.device, a.dtype)
            vec = vec.expand(b, -1) if vec.ndim == 1 else vec
            return torch.einsum("bc...,bc->b...", a, vec).flatten(1).mean(1)
        index = torch.as_tensor(self.units, device=a.device).expand(b) if not isinstance(self.units, tuple) else \
            torch.as_tensor(self.units, device=a.device)
        if index.shape[0] != b:
            raise ValueError(f"objective {self.label(0)!r} has {index.shape[0]} units but the batch has {b} items")
        picked = a[torch.arange(b, device=a.device), index]  # (B,) or (B, H, W)
        if picked.ndim == 1:
            return picked
        if self.kind == "neuron":
            row = picked.shape[1] // 2 if self.row is None else self.row
            col = picked.shape[2] // 2 if self.col is None else self.col
            return picked[:, row, col]
        return picked.flatten(1).mean(1)


def _diversity(a: torch.Tensor) -> torch.Tensor:
    b, c = a.shape[:2]
    if b < 2:
        return a.new_zeros(b)
    flat = a.reshape(b, c, -1)
    gram = flat @ flat.transpose(1, 2) / flat.shape[2]
    gram = torch.nn.functional.normalize(gram.reshape(b, -1), dim=1)
    sim = gram @ gram.T
    return -(sim.sum(1) - sim.diagonal()) / (b - 1)


class Objective:
    """A weighted sum of primitive terms; call it on activations to get (B,) values.

    Attributes:
        layers: the layers the objective reads (`OUTPUT` = "" for the model output), in first-use order.
        batch: the number of batch items a batched objective needs, or `None` if it fits any batch.
        couples_batch: True when items influence each other (diversity): such objectives are never split.
    """

    __slots__ = ("terms",)

    def __init__(self, terms: Sequence[tuple[float, _Term]]):
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
            if t.kind not in ("channel", "neuron"):
                return None
            found.update(t.units if isinstance(t.units, tuple) else (t.units,))
        return frozenset(found)

    @property
    def couples_batch(self) -> bool:
        return any(t.kind == "diversity" for _, t in self.terms)

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
        """Resolve class names with `spec.class_index`."""
        return Objective([(w, t.bind(spec)) for w, t in self.terms])

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
            name = t.label(0) if t.batch is None else f"{t.layer}:{list(t.units)}" if t.units is not None else t.label(0)
            if t.kind == "custom":
                name = t.name
            parts.append(name if w == 1 else f"-{name}" if w == -1 else f"{w:g}*{name}")
        return " + ".join(parts).replace("+ -", "- ")

    __str__ = __repr__


def _one(term: _Term) -> Objective:
    return Objective([(1.0, term)])


def _layer_name(layer: Any) -> str:
    if not isinstance(layer, str):
        raise TypeError(f"a layer is given by its named_modules() path (str), got {type(layer).__name__}")
    return layer


def neuron(layer: str, ch: Indices, row: int | None = None, col: int | None = None) -> Objective:
    """The activation of channel `ch` at (`row`, `col`) of `layer`'s output; the centre (H // 2, W // 2) by default.

    `ch` may be a list: channel `ch[i]` for batch item i. For a (B, F) layer the position is ignored.
    """
    return _one(_Term("neuron", _layer_name(layer), _as_list(ch), row, col))


def channel(layer: str, ch: Indices) -> Objective:
    """The mean over space of channel `ch` of `layer`'s output; a list assigns channel `ch[i]` to batch item i."""
    return _one(_Term("channel", _layer_name(layer), _as_list(ch)))


def layer(layer: str) -> Objective:
    """The mean squared activation of the whole layer (DeepDream's L2 objective)."""
    return _one(_Term("layer", _layer_name(layer)))


def class_logit(c: int | str | Sequence[int | str]) -> Objective:
    """The pre-softmax score of class `c` (an index or a class name); a list assigns class `c[i]` to item i."""
    units = c if isinstance(c, (numbers.Integral, str)) else tuple(c)
    return _one(_Term("class", OUTPUT, units if not isinstance(units, numbers.Integral) else int(units)))


def direction(layer: str, vector: torch.Tensor | Sequence[float]) -> Objective:
    """The mean over positions of <activation, vector>; `vector` (C,) for every item, or (B, C) one per item."""
    vec = torch.as_tensor(vector, dtype=torch.float32).detach()
    if vec.ndim not in (1, 2):
        raise ValueError(f"direction vector must have shape (C,) or (B, C), got {tuple(vec.shape)}")
    return _one(_Term("direction", _layer_name(layer), vector=vec))


def diversity(layer: str) -> Objective:
    """Push batch items apart: minus the mean cosine similarity of each item's Gram matrix (channels x channels)
    of `layer` to those of the other items (Olah et al. 2017). Usually weighted, e.g. `obj + 1e-2 * diversity(l)`."""
    return _one(_Term("diversity", _layer_name(layer)))


def custom(layers: str | Sequence[str], fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor], name: str) -> Objective:
    """A new objective: `fn(acts) -> (B,)` reads `acts[layer]` for each of `layers` (`OUTPUT` for the output)."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    return _one(_Term("custom", layers[0] if layers else OUTPUT, fn=fn, extra_layers=layers, name=name))


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
