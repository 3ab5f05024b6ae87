"""bf16 scans made exact: candidates found in bfloat16, re-scored in float32, and a check that nothing was missed.

The bf16 pass keeps, per unit, the `plan.candidates` (> k) inputs with the highest bfloat16 response, and `floor`,
the highest response it dropped. Re-scoring then runs only candidate images through the float32 network, in
batches of the size each image originally ran in (per-image float32 results depend on the batch size, not on the
other images in the batch, so the values are the very bits a float32 scan computes), and certifies each unit:

    t  = the k-th float32 value among the re-scored candidates (the would-be top-k's last),
    e  = the largest |float32 - bfloat16| difference seen on this unit's re-scored candidates,
    d  = max(2 e, RHO * |t|)            the error bound assumed for the inputs never re-scored,
    b  = the highest bfloat16 response among inputs not re-scored (dropped ones included),
    certified when b + d < t: no input left out can reach the top-k.

RHO = 2^-5 is eight times bfloat16's unit roundoff (2^-8 relative per rounding), so a few layers of rounding fit
inside it; the 2 e term covers networks whose errors are larger, measured on the very inputs that matter (the
highest responses). Uncertified units first get more of their candidates re-scored (all with bf16 response
>= t - d); units whose bound cannot be met (ties at a saturation such as ReLU's 0 or ReLU6's 6 spread over more
inputs than the candidates hold) are recomputed by a float32 scan of their layers, which is exact by construction.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Any

import torch

from ._collect import EMPTY_KEY, Collector, LayerBatch, Plan, State, sort_keys
from ._topk_state import FIELDS

__all__ = ["certify", "RHO"]

RHO = 2.0 ** -5


class _Scores(Collector):
    """Float32 responses and argmax positions of every chosen unit for the re-scored images."""

    name = "scores"

    def empty(self, plan: Plan) -> State:
        return {lp.name: defaultdict(list) for lp in plan.layers}

    def update(self, state: State, batch: LayerBatch) -> None:
        layer = state[batch.plan.name]
        scores = batch.score
        units = scores.shape[1]
        rows = torch.arange(scores.shape[0], device=scores.device).repeat_interleave(units)
        cols = torch.arange(units, device=scores.device).repeat(scores.shape[0])
        r, c = batch.positions(rows, cols)
        layer["indices"].append(batch.indices.cpu())
        layer["scores"].append(scores.cpu())
        layer["rows"].append(r.view(-1, units).cpu())
        layer["cols"].append(c.view(-1, units).cpu())


class _Table:
    """Float32 re-scores by dataset index: per layer (N, U) scores / rows / cols, looked up for (U, M) indices."""

    def __init__(self) -> None:
        self.index = torch.empty(0, dtype=torch.int64)
        self.layers: dict[str, dict[str, torch.Tensor]] = {}

    def add(self, state: State) -> None:
        for name, parts in state.items():
            if not parts:
                continue
            got = {key: torch.cat(parts[key]) for key in ("indices", "scores", "rows", "cols")}
            index, first = _unique_first(got.pop("indices"))
            got = {key: value[first] for key, value in got.items()}
            old = self.layers.get(name)
            self.layers[name] = got if old is None else {key: torch.cat([old[key], got[key]]) for key in got}
            if name == next(iter(state)):
                self.index = torch.cat([self.index, index])

    def lookup(self, name: str, indices: torch.Tensor, unit_rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(U, M) dataset indices -> (found mask, scores, rows, cols), each (U, M)."""
        if len(self.index) == 0:
            nothing = torch.zeros_like(indices, dtype=torch.bool)
            return nothing, torch.zeros_like(indices, dtype=torch.float32), indices.clone(), indices.clone()
        order = torch.argsort(self.index)
        sorted_index = self.index[order]
        place = torch.searchsorted(sorted_index, indices.clamp(min=0)).clamp(max=len(order) - 1)
        found = (indices >= 0) & (sorted_index[place] == indices)
        row = order[place]
        table = self.layers[name]
        units = unit_rows[:, None].expand_as(indices)
        return found, table["scores"][row, units], table["rows"][row, units], table["cols"][row, units]


def _unique_first(index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seen: dict[int, int] = {}
    for position, value in enumerate(index.tolist()):
        seen.setdefault(value, position)
    first = torch.tensor(list(seen.values()), dtype=torch.int64)
    return index[first], first


def _rescore(runner_factory, dataset_sizes: dict[int, int], table: _Table) -> None:
    """Run the images `dataset_sizes` (index -> batch size it originally ran in) in float32, in batches of that size
    (the last batch of a size padded with copies of its first image), and add their scores to `table`."""
    groups: dict[int, list[int]] = defaultdict(list)
    for index, size in sorted(dataset_sizes.items()):
        groups[size].append(index)
    for size, items in sorted(groups.items()):
        order = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            order.extend(chunk + [chunk[0]] * (size - len(chunk)))
        with runner_factory(size) as runner:
            table.add(runner.run_items(order)["states"]["scores"])


def certify(runner_factory, fallback, plan: Plan, candidates: State, k: int) -> tuple[State, dict[str, Any]]:
    """Exact top-k states (per layer, (U, k) tensors as `TopKCollector` keeps them) from a bf16 candidate state.

    `runner_factory(batch_size)` gives a float32 `ShardRunner` context collecting `_Scores`; `fallback(plan)` runs
    a float32 top-k scan of a sub-plan and returns its merged top-k state. Returns (state, report)."""
    table = _Table()
    layers = {lp.name: lp for lp in plan.layers}
    certified: dict[str, torch.Tensor] = {}
    hopeless: dict[str, torch.Tensor] = {}
    chosen: dict[str, torch.Tensor] = {}
    for name, c in candidates.items():
        valid = c["indices"] >= 0
        t16 = c["values"][:, min(k, c["values"].shape[1]) - 1]
        # First round: the bf16 top-k (and its ties); later rounds add what the certificate asks for.
        chosen[name] = valid & (c["values"] >= t16[:, None])
        # Drops at or above the k-th bf16 value: ties beyond the candidates, certification is impossible.
        hopeless[name] = (c["floor"] > float("-inf")) & (c["floor"] >= t16)
    rounds = 0
    while True:
        need: dict[int, int] = {}
        for name, c in candidates.items():
            mask = chosen[name] & ~hopeless[name][:, None]
            for index, size in zip(c["indices"][mask].tolist(), c["batch_sizes"][mask].tolist()):
                need.setdefault(index, size)
        known = set(table.index.tolist())
        need = {i: s for i, s in need.items() if i not in known}
        if need:
            _rescore(runner_factory, need, table)
            rounds += 1
        grown = False
        for name, c in candidates.items():
            ok, extra = _check(c, table, name, torch.arange(len(layers[name].channels)), k)
            certified[name] = ok & ~hopeless[name]
            extra &= ~hopeless[name][:, None] & ~certified[name][:, None]
            if bool((extra & ~chosen[name]).any()):
                chosen[name] |= extra
                grown = True
        if not grown:
            break
    state = {name: _exact_topk(c, table, name, torch.arange(c["indices"].shape[0]), k)
             for name, c in candidates.items()}
    failing = {name: [layers[name].channels[u] for u in torch.nonzero(~ok).flatten().tolist()]
               for name, ok in certified.items() if not bool(ok.all())}
    if failing:
        sub = replace(plan, layers=tuple(replace(layers[n], channels=tuple(ch)) for n, ch in failing.items()
                                         if ch), candidates=0, precision="float32")
        exact = fallback(sub)
        for name, channels in failing.items():
            rows = torch.tensor([layers[name].channels.index(ch) for ch in channels])
            for key in (*FIELDS, "keys"):
                state[name][key][rows] = exact[name][key]
    report = {"rescored_images": len(table.index), "rescore_rounds": rounds,
              "fallback_units": {name: len(ch) for name, ch in failing.items()},
              "units": sum(len(lp.channels) for lp in plan.layers), "rho": RHO}
    return state, report


def _check(c: dict, table: _Table, name: str, unit_rows: torch.Tensor, k: int
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """(certified (U,), entries to re-score next (U, M)) for one layer's candidates."""
    found, s32, _, _ = table.lookup(name, c["indices"], unit_rows)
    s16 = c["values"]
    keys = torch.where(found, sort_keys(torch.where(found, s32, torch.zeros_like(s32)), c["indices"]),
                       torch.full_like(c["indices"], EMPTY_KEY))
    top, where = keys.topk(min(k, keys.shape[1]), dim=1)
    filled = top[:, -1] != EMPTY_KEY
    t32 = torch.where(filled, s32.gather(1, where[:, -1:])[:, 0], torch.full_like(s16[:, 0], float("-inf")))
    diff = torch.where(found, (s32 - s16).abs(), torch.zeros_like(s16))
    delta = torch.maximum(2 * diff.amax(1), RHO * t32.abs().nan_to_num(posinf=0.0))
    valid = c["indices"] >= 0
    rest = torch.where(valid & ~found, s16, torch.full_like(s16, float("-inf"))).amax(1)
    bound = torch.maximum(rest, c["floor"])
    certified = (bound == float("-inf")) | (filled & (bound + delta < t32))
    extra = valid & ~found & (s16 >= (t32 - delta)[:, None])
    return certified, extra


def _exact_topk(c: dict, table: _Table, name: str, unit_rows: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    found, s32, rows, cols = table.lookup(name, c["indices"], unit_rows)
    indices = torch.where(found, c["indices"], torch.full_like(c["indices"], -1))
    keys = torch.where(found, sort_keys(torch.where(found, s32, torch.zeros_like(s32)), indices),
                       torch.full_like(indices, EMPTY_KEY))
    top, where = keys.topk(min(k, keys.shape[1]), dim=1)
    empty = top == EMPTY_KEY
    out = {"keys": top}
    fields = {"values": torch.where(found, s32, torch.full_like(s32, float("-inf"))), "indices": indices,
              "labels": c["labels"], "rows": rows, "cols": cols, "batch_sizes": c["batch_sizes"]}
    for key, value in fields.items():
        picked = value.gather(1, where)
        fill = float("-inf") if key == "values" else -1
        out[key] = torch.where(empty, torch.full_like(picked, fill), picked)
    out["floor"] = torch.full((indices.shape[0],), float("-inf"))
    return out
