"""`TopK`: the k inputs each unit responds to most, with where in the input it responds, and class purity."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from PIL import Image

from ..errors import ConvscopeError, LayerNotFoundError, UnitOutOfRangeError
from ..results import Recipe, ResultMixin

__all__ = ["TopK", "LayerTopK"]


@dataclass(frozen=True, eq=False)
class LayerTopK:
    """One layer's top-k. Tensors are (U, k), row `u` for unit `channels[u]`, best first (value descending, ties
    by dataset index ascending); slots never filled (fewer than k inputs) hold index -1.

    Attributes:
        values: float32 response (spatial max, or spatial mean with `by="mean"`).
        indices: int64 dataset index; labels: int64 label of that item.
        rows, cols: int64 position of the first spatial max (row-major) in the layer's (H, W) map; -1 for (B, F)
            layers.
    """

    layer: str
    channels: tuple[int, ...]
    values: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor

    def row(self, channel: int) -> int:
        try:
            return self.channels.index(int(channel))
        except ValueError:
            raise UnitOutOfRangeError(f"unit {self.layer}:{channel} was not scanned; scanned channels "
                                      f"{self.channels[0]}..{self.channels[-1]} ({len(self.channels)} units)"
                                      ) from None


@dataclass(frozen=True, eq=False)
class TopK(ResultMixin):
    """Top-k inputs per unit over a dataset.

    Attributes:
        layers: layer name -> `LayerTopK`, in network order.
        k: examples per unit; by: "max" or "mean".
        sources: dataset index -> item name (file path for image folders, `name[i]` otherwise), for every index
            in the result.
        classes: the dataset's class names (label -> name), or None.
        recipe: how it was made.
        origin: the `(spec, dataset)` the scan ran on, for drawing pictures (not saved; `attach` sets it again
            after `from_dict`).
    """

    layers: dict[str, LayerTopK]
    k: int
    by: str
    sources: dict[int, str]
    classes: tuple[str, ...] | None
    recipe: Recipe
    origin: tuple[Any, Any] | None = field(default=None, repr=False, compare=False)

    def __getitem__(self, layer: str) -> LayerTopK:
        if layer not in self.layers:
            raise LayerNotFoundError(f"layer {layer!r} was not scanned; scanned: {', '.join(self.layers)}")
        return self.layers[layer]

    def class_name(self, label: int) -> str:
        if self.classes is not None and 0 <= label < len(self.classes):
            return self.classes[label]
        return str(label)

    def examples(self, layer: str, channel: int) -> list[dict[str, Any]]:
        """Unit `layer:channel`'s examples, best first: {index, source, label, class, value, row, col}."""
        t = self[layer]
        u = t.row(channel)
        out = []
        for slot in range(t.indices.shape[1]):
            index = int(t.indices[u, slot])
            if index < 0:
                break
            label = int(t.labels[u, slot])
            out.append({"index": index, "source": self.sources.get(index, str(index)), "label": label,
                        "class": self.class_name(label), "value": float(t.values[u, slot]),
                        "row": int(t.rows[u, slot]), "col": int(t.cols[u, slot])})
        return out

    def purity(self, layer: str, channel: int) -> dict[str, Any]:
        """Class purity of a unit's top-k: label histogram {class: count} (most common first), the majority class
        (ties: the smaller label) and its fraction of the examples."""
        labels = [e["label"] for e in self.examples(layer, channel) if e["label"] >= 0]
        if not labels:
            return {"histogram": {}, "majority": None, "fraction": 0.0}
        counts = Counter(labels)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        label, count = ordered[0]
        return {"histogram": {self.class_name(lab): n for lab, n in ordered}, "majority": self.class_name(label),
                "fraction": count / len(labels)}

    def index(self) -> dict[str, Any]:
        """What `convscope topk` writes as index.json: per layer, per unit, its examples and purity."""
        return {name: {str(c): {"examples": self.examples(name, c), "purity": self.purity(name, c)}
                       for c in t.channels} for name, t in self.layers.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; `from_dict` gives back equal tensors."""
        return {"kind": "topk", "k": self.k, "by": self.by, "classes": list(self.classes) if self.classes else None,
                "sources": {str(i): s for i, s in sorted(self.sources.items())}, "recipe": self.recipe.to_dict(),
                "layers": {name: {"channels": list(t.channels),
                                  **{f: getattr(t, f).tolist() for f in ("values", "indices", "labels", "rows",
                                                                          "cols")}}
                           for name, t in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TopK":
        layers = {}
        for name, d in data["layers"].items():
            units = len(d["channels"])
            shaped = {f: torch.tensor(d[f], dtype=torch.float32 if f == "values" else torch.int64).reshape(units, -1)
                      for f in ("values", "indices", "labels", "rows", "cols")}
            layers[name] = LayerTopK(name, tuple(d["channels"]), **shaped)
        classes = tuple(data["classes"]) if data.get("classes") else None
        return cls(layers, int(data["k"]), data["by"], {int(i): s for i, s in data["sources"].items()}, classes,
                   Recipe(**data["recipe"]))

    def attach(self, model: Any, data: Any) -> "TopK":
        """The same result with the model and dataset it was made on, to draw pictures after `from_dict`."""
        from ..data import resolve
        from ..models import load

        return replace(self, origin=(load(model), resolve(data)))

    def _origin(self) -> tuple[Any, Any]:
        if self.origin is None:
            raise ConvscopeError("this TopK has no model and dataset attached (it was loaded from data); call "
                                 "topk.attach(model, data) to draw its pictures")
        return self.origin

    def unit(self, layer: str, channel: int, *, projections: tuple[str, ...] = ("deconvnet", "guided")
             ) -> "UnitExamples":
        """The examples of unit `layer:channel` as pictures: images, receptive-field patches and projections."""
        from ._examples import unit_examples

        spec, dataset = self._origin()
        return unit_examples(self, spec, dataset, layer, channel, projections=projections)

    def to_image(self, layer: str | None = None, *, units: int = 16) -> Image.Image:
        """A grid of the first `units` units of `layer` (default: the first layer): each row a unit's top-k images
        with their values."""
        from ._montage import topk_overview

        spec, dataset = self._origin()
        return topk_overview(self, spec, dataset, layer or next(iter(self.layers)), units)


from ._examples import UnitExamples  # noqa: E402  (for the annotation; _examples imports nothing of this module)
