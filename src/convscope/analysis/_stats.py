"""`Stats`: per-unit activation statistics of a dataset scan, and dead units (definitions in `_stats_state`)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..results import Recipe, ResultMixin
from ._stats_state import HIST_EDGES

__all__ = ["Stats", "LayerStats"]


@dataclass(frozen=True, eq=False)
class LayerStats:
    """One layer's statistics; every tensor is indexed by position in `channels` (U units).

    Attributes:
        layer: layer name; channels: the units' channel numbers (U,).
        inputs: inputs seen; positions: spatial positions per input (1 for (B, F) layers).
        mean, std: (U,) float64, over all inputs and positions; max: (U,) float32, the largest activation.
        active: (U,) int64, inputs whose spatial max is > 0; hist: (U, bins) int64 counts of the per-input
            response in `Stats.edges`; dead: (U,) bool, `max <= 0`.
    """

    layer: str
    channels: tuple[int, ...]
    inputs: int
    positions: int
    mean: torch.Tensor
    std: torch.Tensor
    max: torch.Tensor
    active: torch.Tensor
    hist: torch.Tensor

    @property
    def dead(self) -> torch.Tensor:
        return self.max <= 0

    @property
    def active_fraction(self) -> torch.Tensor:
        """(U,) float64 fraction of inputs on which each unit fires (spatial max > 0); sparsity is 1 minus this."""
        return self.active.double() / max(1, self.inputs)

    def dead_units(self) -> list[int]:
        return [c for c, d in zip(self.channels, self.dead.tolist()) if d]

    def summary(self) -> dict[str, Any]:
        fractions = self.active_fraction.tolist()
        return {"layer": self.layer, "units": len(self.channels), "dead": int(self.dead.sum()),
                "dead_units": self.dead_units(), "median_active": statistics.median(fractions) if fractions else 0.0,
                "median_sparsity": 1.0 - statistics.median(fractions) if fractions else 1.0,
                "inputs": self.inputs}


@dataclass(frozen=True, eq=False)
class Stats(ResultMixin):
    """Activation statistics per unit of the scanned layers.

    Attributes:
        layers: layer name -> `LayerStats`, in network order.
        edges: (bins - 1,) float32 histogram edges (`HIST_EDGES`), the same for every unit.
        by: the per-input response histogrammed ("max": spatial max; "mean": spatial mean).
        exact: which statistics equal a float32 computation ("all" in float32; with bf16 only the ones listed,
            the rest computed from bfloat16 activations).
        recipe: how it was made.
    """

    layers: dict[str, LayerStats]
    edges: torch.Tensor
    by: str
    exact: tuple[str, ...]
    recipe: Recipe

    def __getitem__(self, layer: str) -> LayerStats:
        if layer not in self.layers:
            from ..errors import LayerNotFoundError

            raise LayerNotFoundError(f"layer {layer!r} was not scanned; scanned: {', '.join(self.layers)}")
        return self.layers[layer]

    def summary(self) -> list[dict[str, Any]]:
        """Per layer: units, dead count and list, median active fraction and median sparsity."""
        return [stats.summary() for stats in self.layers.values()]

    def table(self) -> list[dict[str, Any]]:
        """One row per unit: layer, unit, mean, std, max, active fraction, dead."""
        rows = []
        for name, s in self.layers.items():
            fraction = s.active_fraction
            for i, channel in enumerate(s.channels):
                rows.append({"layer": name, "unit": channel, "mean": float(s.mean[i]), "std": float(s.std[i]),
                             "max": float(s.max[i]), "active": float(fraction[i]), "dead": bool(s.dead[i])})
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (exact: floats keep every bit through `from_dict`)."""
        return {"kind": "stats", "by": self.by, "exact": list(self.exact), "edges": self.edges.tolist(),
                "recipe": self.recipe.to_dict(),
                "layers": {name: {"channels": list(s.channels), "inputs": s.inputs, "positions": s.positions,
                                  "mean": s.mean.tolist(), "std": s.std.tolist(), "max": s.max.tolist(),
                                  "active": s.active.tolist(), "hist": s.hist.tolist()}
                           for name, s in self.layers.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Stats":
        layers = {name: LayerStats(name, tuple(d["channels"]), int(d["inputs"]), int(d["positions"]),
                                   torch.tensor(d["mean"], dtype=torch.float64),
                                   torch.tensor(d["std"], dtype=torch.float64),
                                   torch.tensor(d["max"], dtype=torch.float32),
                                   torch.tensor(d["active"], dtype=torch.int64).reshape(-1),
                                   torch.tensor(d["hist"], dtype=torch.int64).reshape(len(d["channels"]), -1))
                  for name, d in data["layers"].items()}
        return cls(layers, torch.tensor(data["edges"], dtype=torch.float32), data["by"], tuple(data["exact"]),
                   Recipe(**data["recipe"]))

    def to_image(self, *, width: int = 640) -> Image.Image:
        """Per layer: each unit's active fraction as a bar (dead units red), with the layer's summary line."""
        from ._montage import stats_picture

        return stats_picture(self, width=width)


def build_stats(state: dict[str, Any], layers: dict[str, tuple[int, ...]], by: str, exact: tuple[str, ...],
                recipe: Recipe) -> Stats:
    """The `Stats` result from a merged `StatsCollector` state (`layers`: name -> channels, in network order)."""
    out = {}
    for name, channels in layers.items():
        s = state[name]
        count = max(1, s["inputs"] * s["positions"])
        out[name] = LayerStats(name, channels, int(s["inputs"]), int(s["positions"]), s["mean"].clone(),
                               (s["m2"] / count).sqrt(), s["max"].clone(), s["active"].clone(), s["hist"].clone())
    return Stats(out, HIST_EDGES.clone(), by, exact, recipe)
