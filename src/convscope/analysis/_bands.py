"""Bands: every input within a margin of a unit's k-th bf16 value, for the units whose candidates are not enough
(`_certify`, step 1): from the band the bf16 pass kept (`CandidateCollector`) where it reaches far enough, else from
one more bf16 pass up to the unit's layer (`_Band`), with its rules for giving up bands that hold too much."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ._collect import Collector, LayerBatch, Plan, State
from ._rescore import Columns, Rows, Sidecar, Table
from ._topk_state import band_threshold

__all__ = ["collect_bands"]


class _Stop(Exception):
    """Raised by a band pass once every unit it collects for has been given up."""


class _Band(Sidecar):
    """A bf16 pass collecting, for chosen units, every input whose score reaches the unit's threshold (dataset
    index, score, batch size, label), and the best score below it (the new floor).

    A layer whose band holds more than half the inputs seen (after `patience` inputs) is given up: re-scoring
    most of the dataset costs more than the float32 pass its units then get. So is the fullest unit whenever the
    pairs kept exceed `limit`."""

    name = "band"

    def __init__(self, thresholds: dict[str, torch.Tensor], limit: int, patience: int) -> None:
        self.thresholds, self.limit, self.patience = thresholds, limit, patience
        self.seen = {name: 0 for name in thresholds}
        self.hits = {name: 0 for name in thresholds}
        self.parts = {name: Columns() for name in thresholds}  # (unit, index, score, label, batch size)
        self.floor = {name: torch.full_like(t, float("-inf")) for name, t in thresholds.items()}
        self.counts = {name: torch.zeros(t.shape, dtype=torch.int64) for name, t in thresholds.items()}
        self.overflow: dict[str, torch.Tensor] = {name: torch.zeros(t.shape, dtype=torch.bool)
                                                  for name, t in thresholds.items()}

    def update(self, state: State, batch: LayerBatch) -> None:
        name = batch.plan.name
        if name not in self.thresholds:
            return
        theta = self.thresholds[name]
        scores = batch.score.cpu()  # (B, U)
        inside = scores >= theta
        below = torch.where(inside, torch.full_like(scores, float("-inf")), scores).amax(0)
        self.floor[name] = torch.maximum(self.floor[name], below)
        self.seen[name] += scores.shape[0]
        self.hits[name] += int(inside.any(1).sum())
        if self.seen[name] >= self.patience and 2 * self.hits[name] > self.seen[name]:
            self._give_up(name, theta < float("inf"))
            return
        b, u = torch.nonzero(inside, as_tuple=True)
        if u.numel() == 0:
            return
        indices = batch.indices.cpu()
        self.parts[name].add(u, indices[b], scores[b, u], batch.labels.cpu()[b], torch.full_like(u, batch.batch_size))
        self.counts[name] += torch.bincount(u, minlength=theta.numel())
        self._enforce_limit()

    def _give_up(self, name: str, units: torch.Tensor) -> None:
        self.overflow[name] |= units
        self.thresholds[name][units] = float("inf")
        self.counts[name][units] = 0
        if self.parts[name].size:
            self.parts[name].keep(~units[self.parts[name].columns()[0]])
        if all(bool((t == float("inf")).all()) for t in self.thresholds.values()):
            raise _Stop

    def _enforce_limit(self) -> None:
        while sum(int(c.sum()) for c in self.counts.values()) > self.limit:  # give up on the fullest unit
            name = max(self.counts, key=lambda n: int(self.counts[n].max()) if self.counts[n].numel() else -1)
            fullest = torch.zeros_like(self.overflow[name])
            fullest[int(self.counts[name].argmax())] = True
            self._give_up(name, fullest)

    def rows(self, name: str, units: int) -> Rows:
        """The collected inputs as `Rows` (units without a threshold get an empty row)."""
        parts = self.parts[name]
        if parts.size:
            u, index, score, label, size = parts.columns()
        else:
            u = index = label = size = torch.empty(0, dtype=torch.int64)
            score = torch.empty(0)
        return _pairs_rows(u, index, score, label, size, units, self.floor[name])


def _pairs_rows(u: torch.Tensor, index: torch.Tensor, score: torch.Tensor, label: torch.Tensor, size: torch.Tensor,
                units: int, floor: torch.Tensor) -> Rows:
    """(unit, index, score, label, batch size) pairs (N,) as `Rows` of `units` units, each unit's pairs in the
    order given, and `floor` (U,)."""
    counts = torch.bincount(u, minlength=units)
    width = max(1, int(counts.max()) if counts.numel() else 1)
    order = torch.argsort(u, stable=True)
    u, index, score, label, size = u[order], index[order], score[order], label[order], size[order]
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(len(u)) - start[u]
    shape = (units, width)
    full = torch.full(shape, -1, dtype=torch.int64)
    indices, labels, sizes = full.clone(), full.clone(), full.clone()
    s16 = torch.full(shape, float("-inf"))
    indices[u, slot], labels[u, slot], sizes[u, slot], s16[u, slot] = index, label, size, score
    return Rows.make(indices, s16, sizes, labels, floor)


def _band_pass(bf16_pass: Callable[[Plan, Collector], None], plan: Plan, rows: dict[str, Rows], table: Table,
               thresholds: dict[str, torch.Tensor], given_up: dict[str, torch.Tensor], report: dict[str, Any],
               limit: int) -> None:
    """For units with a finite threshold, replace their rows (in place) by every input whose bf16 score reaches it
    (one bf16 pass up to the deepest such layer), with the float32 results the table already holds."""
    thresholds = {name: t for name, t in thresholds.items() if bool((t < float("inf")).any())}
    if not thresholds:
        return
    collector = _Band({name: t.clone() for name, t in thresholds.items()}, limit, max(512, plan.items // 8))
    last = max(i for i, lp in enumerate(plan.layers) if lp.name in thresholds)
    try:
        bf16_pass(replace(plan, layers=plan.layers[:last + 1], stats=False), collector)
    except _Stop:
        pass
    report["band_passes"] += 1
    for name, t in thresholds.items():
        take = t < float("inf")
        _replace_rows(rows, name, collector.rows(name, take.numel()), take, table)
        given_up[name] |= collector.overflow[name]
        report["band_units"][name] = report["band_units"].get(name, 0) + int(take.sum())
        report["band_pairs"] += int(collector.counts[name].sum())


def _replace_rows(rows: dict[str, Rows], name: str, band: Rows, take: torch.Tensor, table: Table) -> None:
    """Replace the rows of the units `take` (U,) of layer `name` by `band`'s, with what the table knows."""
    old = rows[name]
    table.fill(name, band)
    width = max(old.indices.shape[1], band.indices.shape[1])
    merged = {}
    for field in ("indices", "s16", "sizes", "labels", "found", "s32", "rows", "cols", "placed"):
        a, b = _widen(getattr(old, field), width), _widen(getattr(band, field), width)
        merged[field] = torch.where(take[:, None], b, a)
    merged["floor"] = torch.where(take, band.floor, old.floor)
    rows[name] = Rows(**merged)


def collect_bands(bf16_pass: Callable[[Plan, Collector], None], plan: Plan, rows: dict[str, Rows], table: Table,
                  thresholds: dict[str, torch.Tensor], given_up: dict[str, torch.Tensor], report: dict[str, Any],
                  kept: State, k: int, width: float, limit: int) -> None:
    """Bands for the units with a finite threshold (rows replaced in place): from the band the bf16 pass kept
    (`kept`, the candidate state, see `CandidateCollector`) where it reaches down to the threshold, else from a band
    pass (`_band_pass`, at most `limit` pairs).

    The kept band of a unit holds every input whose bf16 score reaches `band_threshold(t16, width)` (t16 its final
    k-th bf16 value; `width` as the `CandidateCollector` kept it). A threshold at or above that is served from it:
    the unit's row becomes its pairs at or above the threshold, and its floor the best pair below it, or the kept
    band's own threshold (an upper bound of every input it left out), whichever is higher. A layer whose band holds
    more than half the scanned inputs is left to the band pass, which gives it up."""
    rest = {}
    for name, theta in thresholds.items():
        state = kept.get(name, {})
        wanted = theta < float("inf")
        if not state.get("band_open") or not bool(wanted.any()):
            rest[name] = theta
            continue
        pairs = state["band"]
        covered = band_threshold(state["values"][:, k - 1], width)
        served = wanted & (theta >= covered)
        if 2 * int(torch.unique(pairs["index"][served[pairs["unit"]]]).numel()) > plan.items:
            served = torch.zeros_like(served)
        if bool(served.any()):
            u, score = pairs["unit"], pairs["score"]
            mine = served[u]
            inside = mine & (score >= theta[u])
            below = torch.full_like(covered, float("-inf")).scatter_reduce(
                0, u[mine & ~inside], score[mine & ~inside], "amax")
            floor = torch.where(served, torch.maximum(below, covered), torch.full_like(covered, float("-inf")))
            band = _pairs_rows(*(pairs[key][inside] for key in ("unit", "index", "score", "label", "size")),
                               len(theta), floor)
            _replace_rows(rows, name, band, served, table)
            report["band_units"][name] = report["band_units"].get(name, 0) + int(served.sum())
            report["band_units_in_pass"][name] = report["band_units_in_pass"].get(name, 0) + int(served.sum())
            report["band_pairs"] += int(inside.sum())
        left = torch.where(served, torch.full_like(theta, float("inf")), theta)
        if bool((left < float("inf")).any()):
            rest[name] = left
    _band_pass(bf16_pass, plan, rows, table, rest, given_up, report, limit)


def _widen(t: torch.Tensor, width: int) -> torch.Tensor:
    """(U, M) -> (U, width), padded as an empty slot (index -1, score -inf, not found)."""
    if t.shape[1] >= width:
        return t
    if t.dtype == torch.bool:
        fill: Any = False
    elif t.is_floating_point():
        fill = float("-inf")
    else:
        fill = -1
    return torch.cat([t, torch.full((t.shape[0], width - t.shape[1]), fill, dtype=t.dtype)], 1)
