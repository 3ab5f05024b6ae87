"""Running top-k per unit with batched tensor ops: one `torch.topk` over (kept + new) sort keys per batch, for the units
of every layer at once.

The order is (value descending, dataset index ascending) through `sort_keys`, so the result is a function of the
set of items seen, not of the order or grouping in which they arrive: a top-k of top-ks is the top-k. Empty slots
(fewer than k items seen) hold index -1 and value -inf.
"""

from __future__ import annotations

from typing import Any

import torch

from ._bound import relative_margin
from ._collect import EMPTY_KEY, WORK, LayerBatch, Plan, Staged, State, sort_keys

__all__ = ["TopKCollector", "CandidateCollector", "FIELDS", "band_threshold"]

# Per layer, per unit, per slot: what each kept example records.
FIELDS = ("values", "indices", "rows", "cols", "labels", "batch_sizes")
_KEPT = (*FIELDS, "keys", "floor")  # a layer's per-unit tensors


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


class TopKCollector(Staged):
    """The k best inputs of every chosen unit: value, dataset index, (row, col) of the first spatial max, label
    and the size of the batch the input ran in. `floor` (U,) is the best value ever dropped where `track_floor` is
    set (the bf16 candidates), else -inf.

    Per layer, while its output is live (`update`): its scores, and the (row, col) of every input that can enter
    a unit's top-k (it beats the unit's k-th kept input, on value and then index; while slots are still empty,
    it is among the batch's own k best). After the forward (`end_batch`): one top-k over (kept + new) sort keys
    for the units of every layer at once."""

    name = "topk"
    needs = frozenset({"peak"})  # with by="mean" the score comes from the sums, which reduce() leaves alone

    positions = True  # (row, col) of each kept input's max; the bf16 candidates get theirs in float32
    track_floor = False  # the best value dropped: only the bf16 candidates need it (their certificate)

    def __init__(self, k: int) -> None:
        self.k = k

    def empty(self, plan: Plan) -> State:
        return {lp.name: _empty_layer(len(lp.channels), self.k) for lp in plan.layers}

    def units(self, layer: State) -> int:
        return layer["keys"].shape[0]

    def open(self, layers: dict[str, State], device: torch.device) -> dict[str, Any]:
        return {"flat": {key: torch.cat([layer[key] for layer in layers.values()]).to(device) for key in _KEPT},
                "channels": {}}

    def close(self, work: dict[str, Any], name: str, start: int, stop: int) -> State:
        return {key: t[start:stop].clone() for key, t in work["flat"].items()}

    def update(self, state: State, batch: LayerBatch) -> None:
        work = self.work(state, batch.output.device)
        name = batch.plan.name
        start, stop = work["span"][name]
        scores = batch.score  # (B, U)
        staged: dict[str, Any] = {"scores": scores}
        if self.positions and batch.plan.spatial:
            s, flat = scores.T, work["flat"]
            # Beats the k-th kept input (on value, then index; any input while a slot is empty) and is among the
            # batch's own k best values. Ties on value matter: a unit of MobileNetV2 whose maximum is always 0
            # (on the zero padding) would otherwise send every input to the argmax.
            kth, kth_index = flat["values"][start:stop, -1:], flat["indices"][start:stop, -1:]
            can = (s > kth) | ((s == kth) & (batch.indices[None, :] < kth_index)) | (kth_index < 0)
            if s.shape[1] > self.k and bool((kth_index < 0).any()):  # slots still empty: every input passes above
                can &= s >= s.topk(self.k, dim=1).values[:, -1:]  # so keep the batch's own k best
            units, rows = torch.nonzero(can, as_tuple=True)
            if units.numel():
                staged["pairs"] = (units + start, rows, *batch.positions(rows, units))
        work["staged"][name] = staged
        work["channels"][name] = batch.plan.channels
        work["batch"] = (batch.indices, batch.labels, batch.batch_size)

    def fold(self, work: dict[str, Any], names: list[str], start: int, stop: int) -> None:
        staged = [work["staged"][name] for name in names]
        scores = (torch.cat([s["scores"] for s in staged], 1) if len(staged) > 1 else staged[0]["scores"]).T
        device = scores.device
        indices, labels, batch_size = work["batch"]
        indices, labels = indices.to(device), labels.to(device)
        if bool(torch.isnan(scores).any()):
            self._nan(work, names, start, scores, indices)
        out = self._fold_block(self.rows(work, start, stop), scores, indices, labels, batch_size, start,
                               [s["pairs"] for s in staged if "pairs" in s])
        self.store(work, out, start, stop)

    def _nan(self, work: dict[str, Any], names: list[str], start: int, scores: torch.Tensor,
             indices: torch.Tensor) -> None:
        from ..errors import NonFiniteError

        unit, row = (int(i) for i in torch.nonzero(torch.isnan(scores))[0])
        for name in names:
            first, last = work["span"][name]
            if first <= unit + start < last:
                channel = work["channels"][name][unit + start - first]
                raise NonFiniteError(f"layer {name!r} gives NaN for unit {channel} on dataset item "
                                     f"{int(indices[row])}")

    def _fold_block(self, block: dict[str, torch.Tensor], scores: torch.Tensor, indices: torch.Tensor,
                    labels: torch.Tensor, batch_size: int, start: int, pairs: list[tuple[torch.Tensor, ...]]
                    ) -> dict[str, torch.Tensor]:
        """The units' state `block` ((U, k) tensors) after one batch's `scores` (U, B); `pairs`: (unit + `start`,
        batch row, row, col) of the inputs that could enter, per layer. Returns new tensors."""
        out = dict(block)
        # Threshold test before any key is built: an input can enter a unit's top-k only if its value reaches the
        # k-th kept value (equal values may still win on their index). After the first batches almost none do.
        enters = scores >= block["values"][:, -1:]
        columns = torch.nonzero(enters.any(0)).flatten()
        if self.track_floor:
            dropped = torch.where(enters, torch.full_like(scores, float("-inf")), scores).amax(1)
            out["floor"] = torch.maximum(block["floor"], dropped)
        if columns.numel() == 0:
            return out
        if columns.numel() < scores.shape[1]:
            scores = scores.index_select(1, columns)
        new_indices = indices[columns]
        units, kept = block["keys"].shape
        keys, where, evicted = _select(torch.cat([block["keys"], sort_keys(scores, new_indices)], 1), self.k)
        new = where >= kept  # (U, k): the slots now holding an input of this batch
        old_at, new_at = where.clamp(max=kept - 1), (where - kept).clamp(min=0)
        fresh = {"values": scores.gather(1, new_at), "indices": new_indices[new_at],
                 "labels": labels[columns][new_at], "batch_sizes": torch.full_like(where, batch_size)}
        fresh["rows"], fresh["cols"] = self._places(new, columns[new_at], start, len(indices), pairs)
        for name in FIELDS:
            out[name] = torch.where(new, fresh[name], block[name].gather(1, old_at))
        out["keys"] = keys
        if self.track_floor:
            lost = torch.where(evicted >= kept, scores.gather(1, (evicted - kept).clamp(min=0)[:, None])[:, 0],
                               block["values"].gather(1, evicted.clamp(0, kept - 1)[:, None])[:, 0])
            out["floor"] = torch.maximum(out["floor"], torch.where(evicted >= 0, lost, torch.full_like(lost,
                                                                                                     float("-inf"))))
        return out

    @staticmethod
    def _places(new: torch.Tensor, rows_at: torch.Tensor, start: int, width: int,
                pairs: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) (U, k) of the new slots `new` (U, k) holding batch rows `rows_at` (U, k) of a batch of
        `width` inputs, looked up in the staged `pairs` (-1 elsewhere, and for layers without spatial axes)."""
        places = torch.full((2, *new.shape), -1, dtype=torch.int64, device=new.device)
        if not pairs:
            return places[0], places[1]
        unit, row, r, c = (torch.cat(parts) for parts in zip(*pairs))
        keys = (unit - start) * width + row  # ascending: pairs come from nonzero per layer, layers in order
        slot_unit, slot = torch.nonzero(new, as_tuple=True)
        wanted = slot_unit * width + rows_at[slot_unit, slot]
        at = torch.searchsorted(keys, wanted).clamp(max=len(keys) - 1)
        hit = keys[at] == wanted
        places[0, slot_unit[hit], slot[hit]] = r[at[hit]]
        places[1, slot_unit[hit], slot[hit]] = c[at[hit]]
        return places[0], places[1]

    def merge(self, a: State, b: State) -> State:
        return {name: _merge_layer(a[name], b[name], self.k) for name in a}


def band_threshold(t: torch.Tensor, width: float) -> torch.Tensor:
    """t - width |t| (infinite t kept): increasing in t, so a threshold from a running k-th value never exceeds
    the one from the final k-th."""
    return t - relative_margin(t, width)


_PAIRS = ("unit", "index", "score", "label", "size")


def _no_pairs(device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    return {key: torch.empty(0, dtype=torch.float32 if key == "score" else torch.int64, device=device)
            for key in _PAIRS}


class CandidateCollector(TopKCollector):
    """bf16 pass: keep `candidates` (> k) inputs per unit by their bfloat16 score, to be re-scored in float32, and
    the best score dropped (`floor`). No positions: the re-score computes them in float32.

    With `top` (the scan's k) and `width`, it also keeps each layer's band in the same pass: every (unit, input)
    pair whose score reaches `band_threshold(t, width)`, t the unit's k-th value so far, pruned after each batch
    as t rises. At the end the band holds every input at or above the threshold of the final k-th value, which the
    certificate would otherwise collect with one more bf16 pass (`_certify`). Per layer: "band" (pairs: unit,
    index, score, label, batch size) and "band_open"; a layer whose band outgrows `limit` pairs stops collecting
    (its band is closed and the certificate runs the pass)."""

    name = "candidates"
    positions = False
    track_floor = True

    def __init__(self, k: int, top: int | None = None, width: float = 0.0, limit: int = 0) -> None:
        super().__init__(k)
        self.top, self.width, self.limit = top, width, limit

    @property
    def banding(self) -> bool:
        return self.top is not None and self.limit > 0

    def empty(self, plan: Plan) -> State:
        state = super().empty(plan)
        for layer in state.values():
            layer["band"], layer["band_open"] = _no_pairs(), self.banding
        return state

    def open(self, layers: dict[str, State], device: torch.device) -> dict[str, Any]:
        work = super().open(layers, device)
        work["band"] = {name: {"pairs": {key: t.to(device) for key, t in layer["band"].items()},
                               "open": layer["band_open"]} for name, layer in layers.items()}
        return work

    def close(self, work: dict[str, Any], name: str, start: int, stop: int) -> State:
        band = work["band"][name]
        return {**super().close(work, name, start, stop), "band": band["pairs"], "band_open": band["open"]}

    def _threshold(self, values: torch.Tensor) -> torch.Tensor:
        assert self.top is not None
        return band_threshold(values[:, self.top - 1], self.width)

    def update(self, state: State, batch: LayerBatch) -> None:
        super().update(state, batch)
        work, name = state[WORK], batch.plan.name
        if not work["band"][name]["open"]:
            return
        start, stop = work["span"][name]
        scores = batch.score  # (B, U)
        rows, units = torch.nonzero(scores >= self._threshold(work["flat"]["values"][start:stop]), as_tuple=True)
        work["staged"][name]["band"] = (units, rows, scores[rows, units])

    def fold(self, work: dict[str, Any], names: list[str], start: int, stop: int) -> None:
        super().fold(work, names, start, stop)
        indices, labels, batch_size = work["batch"]
        for name in names:
            band, new = work["band"][name], work["staged"][name].get("band")
            if not band["open"]:
                continue
            pairs = band["pairs"]
            if new is not None and new[0].numel():
                units, rows, scores = new
                device = units.device
                fresh = {"unit": units, "index": indices.to(device)[rows], "score": scores,
                         "label": labels.to(device)[rows], "size": torch.full_like(units, batch_size)}
                pairs = {key: torch.cat([pairs[key], fresh[key]]) for key in _PAIRS}
            first, last = work["span"][name]
            band["pairs"] = self._prune(pairs, work["flat"]["values"][first:last])
            if band["pairs"]["unit"].numel() > self.limit:
                band["open"], band["pairs"] = False, _no_pairs(band["pairs"]["unit"].device)

    def _prune(self, pairs: dict[str, torch.Tensor], values: torch.Tensor) -> dict[str, torch.Tensor]:
        """The pairs at or above their unit's threshold (from `values`, the units' kept values)."""
        keep = pairs["score"] >= self._threshold(values)[pairs["unit"]]
        return {key: t[keep] for key, t in pairs.items()}

    def merge(self, a: State, b: State) -> State:
        out = super().merge(a, b)
        for name, layer in out.items():
            if a[name]["band_open"] and b[name]["band_open"]:
                both = {key: torch.cat([a[name]["band"][key], b[name]["band"][key]]) for key in _PAIRS}
                layer["band"] = self._prune(both, layer["values"])
                layer["band_open"] = layer["band"]["unit"].numel() <= self.limit
            else:
                layer["band_open"] = False
            if not layer["band_open"]:
                layer["band"] = _no_pairs()
        return out
