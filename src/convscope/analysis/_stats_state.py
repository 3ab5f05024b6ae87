"""Online per-unit activation statistics that merge exactly: counts, Chan's parallel mean/variance, max, histograms.

Definitions (per chosen unit, over the whole dataset):
- `mean`, `std`: of the unit's activation over every input and every spatial position (population std, ddof 0).
  Each input contributes float32 sums of its values and squares over its positions; batches and shards are
  combined in float64 with Chan et al.'s parallel formulas, so splitting the data changes nothing but rounding,
  and a scan split the same way (the same shards) gives the same bits.
- `max`: the largest activation anywhere; `dead`: `max <= 0`, the unit never has a positive value.
- `active`: number of inputs whose spatial max is > 0 (the unit fires somewhere on them); sparsity = 1 - active/N.
- `hist`: counts of the per-input response (the ranking value: spatial max, or spatial mean with `by="mean"`)
  in fixed bins `HIST_EDGES`, the same for every unit, shard and machine, so histograms add exactly. The edges are
  signed powers of two at half-octave steps from 2^-10 to 2^10 around an edge at 0; bin `i` is
  `[HIST_EDGES[i-1], HIST_EDGES[i])`, with one open bin at each end. A silent input (response exactly 0) falls in
  `[0, 2^-10)`.
"""

from __future__ import annotations

from typing import Any

import torch

from ._collect import LayerBatch, Plan, Staged, State

__all__ = ["StatsCollector", "HIST_EDGES", "hist_bins", "chan", "to_device"]

_STEPS = torch.arange(-20, 21, dtype=torch.float64) / 2  # half-octave exponents -10 .. 10
_POSITIVE = torch.pow(2.0, _STEPS)
HIST_EDGES: torch.Tensor = torch.cat([-_POSITIVE.flip(0), torch.zeros(1, dtype=torch.float64), _POSITIVE]).float()
"""(83,) float32 bin edges; `len(HIST_EDGES) + 1` bins."""


_HALF = torch.tensor(2.0 ** -0.5, dtype=torch.float32)  # float32(sqrt 2) / 2, exactly: the mantissa of an odd edge


def hist_bins(values: torch.Tensor) -> torch.Tensor:
    """The `HIST_EDGES` bin of each value: `torch.bucketize(values, HIST_EDGES, right=True)`, bit for bit (NaN in the
    last bin), from the float's exponent and mantissa instead of a binary search (3x faster on big batches).

    A positive v = m 2^e (m in [0.5, 1)) reaches 2(e - 1) + [m >= 2^-1/2] half-octave edges past 1 (the odd edges
    are float32(sqrt 2) 2^j, whose mantissa is float32(2^-1/2) exactly); a negative v counts the edges strictly
    below |v|, i.e. those at most the next float down."""
    if values.numel() <= 8192:  # small batches: the binary search's one kernel beats a dozen
        return torch.bucketize(values, HIST_EDGES.to(values.device), right=True)
    negative = values < 0
    size = values.abs()
    size = torch.where(negative, torch.nextafter(size, torch.zeros_like(size)), size).clamp(2.0 ** -11, 2.0 ** 11)
    mantissa, exponent = torch.frexp(size)
    count = (2 * exponent + (mantissa >= _HALF.to(values.device)) + 19).clamp(0, 41)
    out = torch.where(negative, 41 - count, 42 + count).long()
    return torch.where(values.isnan(), torch.full_like(out, len(HIST_EDGES)), out)


def chan(n_a: int, mean_a: torch.Tensor, m2_a: torch.Tensor, n_b: int, mean_b: torch.Tensor, m2_b: torch.Tensor
         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan, Golub & LeVeque's combination of two groups' (count, mean, sum of squared deviations) -> (mean, M2)
    of their union (float64 tensors)."""
    if n_a == 0:
        return mean_b.clone(), m2_b.clone()
    if n_b == 0:
        return mean_a.clone(), m2_a.clone()
    return _combine(mean_a, m2_a, mean_b, m2_b, *_weights(n_a, n_b))


def _weights(n_a: int, n_b: int) -> tuple[float, float]:
    """Chan's weights for groups of n_a and n_b values: (n_b / n, n_a n_b / n), n = n_a + n_b."""
    n = n_a + n_b
    return n_b / n, n_a * n_b / n


def _combine(mean_a: torch.Tensor, m2_a: torch.Tensor, mean_b: torch.Tensor, m2_b: torch.Tensor,
             weight_b: float | torch.Tensor, weight_ab: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan's combination with its weights given (numbers, or per unit (U,) tensors): -> (mean, M2)."""
    delta = mean_b - mean_a
    return mean_a + delta * weight_b, m2_a + m2_b + delta * delta * weight_ab


def to_device(state: dict, device: torch.device | str) -> dict:
    """The same state dict with its tensors on `device` (nested dicts followed; other values kept)."""
    return {key: to_device(value, device) if isinstance(value, dict) else
            value.to(device) if isinstance(value, torch.Tensor) else value for key, value in state.items()}


def _empty_layer(units: int) -> dict:
    return {"inputs": 0, "positions": 0, "mean": torch.zeros(units, dtype=torch.float64),
            "m2": torch.zeros(units, dtype=torch.float64), "max": torch.full((units,), float("-inf")),
            "active": torch.zeros(units, dtype=torch.int64),
            "hist": torch.zeros(units, len(HIST_EDGES) + 1, dtype=torch.int64)}


def _merge_layer(a: dict, b: dict) -> dict:
    n_a, n_b = a["inputs"] * a["positions"], b["inputs"] * b["positions"]
    mean, m2 = chan(n_a, a["mean"], a["m2"], n_b, b["mean"], b["m2"])
    return {"inputs": a["inputs"] + b["inputs"], "positions": a["positions"] or b["positions"], "mean": mean,
            "m2": m2, "max": torch.maximum(a["max"], b["max"]), "active": a["active"] + b["active"],
            "hist": a["hist"] + b["hist"]}


class StatsCollector(Staged):
    """Per-unit mean, std, max, active count and response histogram (see the module docstring). Each layer's
    per-input reductions are staged while its output is live and folded after the forward for the units of every
    layer at once, with the same arithmetic as `chan` per layer."""

    name = "stats"
    needs = frozenset({"peak", "sums", "squares"})

    def empty(self, plan: Plan) -> State:
        return {lp.name: _empty_layer(len(lp.channels)) for lp in plan.layers}

    def units(self, layer: State) -> int:
        return layer["mean"].shape[0]

    def open(self, layers: dict[str, State], device: torch.device) -> dict[str, Any]:
        each = list(layers.values())
        flat = {key: torch.cat([layer[key] for layer in each]).to(device)
                for key in ("mean", "m2", "max", "active", "hist")}
        layer_of = torch.cat([torch.full((self.units(layer),), i, dtype=torch.int64) for i, layer in enumerate(each)])
        return {"flat": flat, "layer_of": layer_of.to(device), "inputs": [layer["inputs"] for layer in each],
                "positions": [layer["positions"] for layer in each]}

    def close(self, work: dict[str, Any], name: str, start: int, stop: int) -> State:
        i = work["order"].index(name)
        return {"inputs": work["inputs"][i], "positions": work["positions"][i],
                **{key: t[start:stop].clone() for key, t in work["flat"].items()}}

    def update(self, state: State, batch: LayerBatch) -> None:
        work = self.work(state, batch.score.device)
        work["staged"][batch.plan.name] = (batch.peak, batch.score, batch.sums, batch.squares,
                                           batch.positions_per_input)

    def fold(self, work: dict[str, Any], names: list[str], start: int, stop: int) -> None:
        staged = [work["staged"][name] for name in names]
        peak, score, sums, squares = (torch.cat(parts, 1) if len(names) > 1 else parts[0]
                                      for parts in list(zip(*staged))[:4])
        inputs, device = peak.shape[0], peak.device
        first = work["order"].index(names[0])
        # Per layer, as `chan` combines a batch with the state (n_a, n_b: counts of values), then per unit.
        own, weight_b, weight_ab = [], [], []
        for i, (*_, positions) in enumerate(staged, first):
            n_a, n_b = work["inputs"][i] * positions, inputs * positions
            own.append(float(n_b))
            weights = _weights(n_a, n_b)
            weight_b.append(weights[0])
            weight_ab.append(weights[1])
            work["inputs"][i] += inputs
            work["positions"][i] = work["positions"][i] or positions
        layer_of = work["layer_of"][start:stop] - first
        per_unit = torch.tensor([own, weight_b, weight_ab], dtype=torch.float64, device=device)[:, layer_of]
        sums, squares = sums.sum(0, dtype=torch.float64), squares.sum(0, dtype=torch.float64)
        mean_b = sums / per_unit[0]
        m2_b = (squares - sums * mean_b).clamp(min=0.0)
        units, bins = peak.shape[1], len(HIST_EDGES) + 1
        cells = hist_bins(score) + torch.arange(0, units * bins, bins, device=device)  # (B, U) -> unit's row
        hist = torch.bincount(cells.flatten(), minlength=units * bins).view(units, bins)
        old = self.rows(work, start, stop)
        mean, m2 = _combine(old["mean"], old["m2"], mean_b, m2_b, per_unit[1], per_unit[2])
        self.store(work, {"mean": mean, "m2": m2, "max": torch.maximum(old["max"], peak.amax(0)),
                          "active": old["active"] + (peak > 0).sum(0), "hist": old["hist"] + hist}, start, stop)

    def merge(self, a: State, b: State) -> State:
        return {name: _merge_layer(a[name], b[name]) for name in a}
