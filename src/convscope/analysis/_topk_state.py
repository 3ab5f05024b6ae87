"""Running top-k per unit with batched tensor ops: one `torch.topk` over (kept + new) sort keys per layer and batch.

The order is (value descending, dataset index ascending) through `sort_keys`, so the result is a function of the
set of items seen, not of the order or grouping in which they arrive: a top-k of top-ks is the top-k. Empty slots
(fewer than k items seen) hold index -1 and value -inf.
"""

from __future__ import annotations

import torch

from ._collect import EMPTY_KEY, Collector, LayerBatch, Plan, State, sort_keys

__all__ = ["TopKCollector", "CandidateCollector", "FIELDS"]

# Per layer, per unit, per slot: what each kept example records.
FIELDS = ("values", "indices", "rows", "cols", "labels", "batch_sizes")


def _empty_layer(units: int, k: int) -> dict[str, torch.Tensor]:
    layer = {name: torch.full((units, k), -1, dtype=torch.int64) for name in FIELDS}
    layer["values"] = torch.full((units, k), float("-inf"))
    layer["keys"] = torch.full((units, k), EMPTY_KEY, dtype=torch.int64)
    layer["floor"] = torch.full((units,), float("-inf"))
    return layer


def _select(keys: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k positions of `keys` (U, N) and the value-order rank of the best one left out: (keys (U, k), positions
    (U, k), position of the (k+1)-th or -1 where there is none)."""
    take = min(k + 1, keys.shape[1])
    top, where = keys.topk(take, dim=1)
    if take == k + 1:
        evicted = torch.where(top[:, k] != EMPTY_KEY, where[:, k], torch.full_like(where[:, k], -1))
        return top[:, :k], where[:, :k], evicted
    return top, where, torch.full((keys.shape[0],), -1, dtype=torch.int64, device=keys.device)


def _merge_layer(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], k: int) -> dict[str, torch.Tensor]:
    keys, where, evicted = _select(torch.cat([a["keys"], b["keys"]], 1), k)
    out = {"keys": keys}
    for name in FIELDS:
        out[name] = torch.cat([a[name], b[name]], 1).gather(1, where)
    values = torch.cat([a["values"], b["values"]], 1)
    lost = torch.where(evicted >= 0, values.gather(1, evicted.clamp(min=0)[:, None])[:, 0],
                       torch.full_like(values[:, 0], float("-inf")))
    out["floor"] = torch.maximum(torch.maximum(a["floor"], b["floor"]), lost)
    return out


class TopKCollector(Collector):
    """The k best inputs of every chosen unit: value, dataset index, (row, col) of the first spatial max, label
    and the size of the batch the input ran in. `floor` (U,) is the best value ever dropped where `track_floor` is
    set (the bf16 candidates), else -inf."""

    name = "topk"
    needs = frozenset({"peak"})  # with by="mean" the score comes from the sums, which reduce() leaves alone

    positions = True  # (row, col) of each kept input's max; the bf16 candidates get theirs in float32
    track_floor = False  # the best value dropped: only the bf16 candidates need it (their certificate)

    def __init__(self, k: int) -> None:
        self.k = k

    def empty(self, plan: Plan) -> State:
        return {lp.name: _empty_layer(len(lp.channels), self.k) for lp in plan.layers}

    def update(self, state: State, batch: LayerBatch) -> None:
        layer = state[batch.plan.name]
        device = batch.output.device
        if layer["keys"].device != device:
            layer.update({name: t.to(device) for name, t in layer.items()})
        scores = batch.score.T  # (U, B)
        if bool(torch.isnan(scores).any()):
            from ..errors import NonFiniteError

            unit, row = (int(i) for i in torch.nonzero(torch.isnan(scores))[0])
            raise NonFiniteError(f"layer {batch.plan.name!r} gives NaN for unit {batch.plan.channels[unit]} on "
                                 f"dataset item {int(batch.indices[row])}")
        # Threshold test before any key is built: an input can enter a unit's top-k only if its value reaches the
        # k-th kept value (equal values may still win on their index). After the first batches almost none do.
        enters = scores >= layer["values"][:, -1:]
        columns = torch.nonzero(enters.any(0)).flatten()
        if self.track_floor:
            dropped = torch.where(enters, torch.full_like(scores, float("-inf")), scores).amax(1)
            layer["floor"] = torch.maximum(layer["floor"], dropped)
        if columns.numel() == 0:
            return
        if columns.numel() < scores.shape[1]:
            scores = scores.index_select(1, columns)
        indices = batch.indices.to(device)[columns]
        units, kept = layer["keys"].shape
        keys, where, evicted = _select(torch.cat([layer["keys"], sort_keys(scores, indices)], 1), self.k)
        count = scores.shape[1]
        fresh = {
            "values": scores,
            "indices": indices.expand(units, count),
            "labels": batch.labels.to(device)[columns].expand(units, count),
            "batch_sizes": torch.full((units, count), batch.batch_size, dtype=torch.int64, device=device),
            "rows": torch.full((units, count), -1, dtype=torch.int64, device=device),
            "cols": torch.full((units, count), -1, dtype=torch.int64, device=device),
        }
        if self.positions:  # only for the inputs that enter the top-k: one argmax over their maps
            unit_ix, slot_ix = torch.nonzero(where >= kept, as_tuple=True)
            fresh_ix = where[unit_ix, slot_ix] - kept
            rows, cols = batch.positions(columns[fresh_ix], unit_ix)
            fresh["rows"][unit_ix, fresh_ix] = rows
            fresh["cols"][unit_ix, fresh_ix] = cols
        if self.track_floor:
            values = torch.cat([layer["values"], scores], 1)
            lost = torch.where(evicted >= 0, values.gather(1, evicted.clamp(min=0)[:, None])[:, 0],
                               torch.full((units,), float("-inf"), device=device))
            layer["floor"] = torch.maximum(layer["floor"], lost)
        for name in FIELDS:
            layer[name] = torch.cat([layer[name], fresh[name]], 1).gather(1, where)
        layer["keys"] = keys

    def merge(self, a: State, b: State) -> State:
        return {name: _merge_layer(a[name], b[name], self.k) for name in a}


class CandidateCollector(TopKCollector):
    """bf16 pass: keep `candidates` (> k) inputs per unit by their bfloat16 score, to be re-scored in float32, and
    the best score dropped (`floor`). No positions: the re-score computes them in float32."""

    name = "candidates"
    positions = False
    track_floor = True
