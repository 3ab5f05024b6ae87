"""Float32 re-scoring of chosen (unit, input) pairs, bit-identical to what a float32 scan computes for them.

A float32 image's activations depend on the size of the batch it runs in (oneDNN and the GEMMs pick their blocking
by batch size; fashion-cnn's conv2 differs at batch 1, fc1 below 16 or 32), not on the other images in the batch
nor on its place in it (`tests/test_analysis_bf16.py` checks both). So every image is re-run in a batch of the
size it first ran in, the last batch of a size padded with copies of its first image, and each batch runs only as
deep as the deepest layer any of its images is needed for: images are sorted by that depth, deepest first, so
images needed only for early layers fill the batches of deeper ones instead of being padded, and the shallow tail
stops early.

A re-run image's float32 scores of every chosen unit of every layer it passes are kept (`Table`), so a later round
that asks about other units of the same image costs nothing; (row, col) positions are computed only for the
pairs asked for (a gather of their maps), and for any final top-k entry still without one at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ._collect import Collector, LayerBatch, LayerPlan, Plan, State

__all__ = ["Columns", "Rows", "Sidecar", "Table", "rescore", "RunnerFactory"]


@dataclass
class Rows:
    """One layer's inputs under consideration, as (U, M) tensors per chosen unit (empty slots: index -1).

    From the bf16 pass: `indices`, `s16` (bfloat16 score, as float32), `sizes` (the batch size the input ran in),
    `labels`, and `floor` (U,): the best bf16 score of any input left out of the row (-inf: none). From the
    float32 re-score (`Table.fill`): `found` (score known), `s32` (float32 score), `rows`, `cols` (first spatial
    max; -1 while unknown or without spatial axes) and `placed` (position known).
    """

    indices: torch.Tensor
    s16: torch.Tensor
    sizes: torch.Tensor
    labels: torch.Tensor
    floor: torch.Tensor
    found: torch.Tensor
    s32: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    placed: torch.Tensor

    @classmethod
    def make(cls, indices: torch.Tensor, s16: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor,
             floor: torch.Tensor) -> "Rows":
        minus = torch.full_like(indices, -1)
        no = torch.zeros_like(indices, dtype=torch.bool)
        return cls(indices, s16.float(), sizes, labels, floor.float(), no, torch.zeros_like(s16, dtype=torch.float32),
                   minus, minus.clone(), no.clone())

    @property
    def valid(self) -> torch.Tensor:
        return self.indices >= 0


class Columns:
    """Append-only columns (same length, any trailing shape) in buffers that grow by doubling.

    A few large allocations instead of small tensors kept from every batch: small long-lived tensors interleaved
    with the network's big per-batch buffers fragment the heap (a band pass over 60,000 images that kept 1 MB of
    pairs as per-batch tensors grew the process by 400 MB)."""

    def __init__(self, capacity: int = 1 << 14) -> None:
        self.size, self.capacity = 0, capacity
        self.buffers: list[torch.Tensor] = []

    def add(self, *columns: torch.Tensor) -> None:
        count = len(columns[0])
        if not self.buffers:
            self.buffers = [torch.empty((self.capacity, *c.shape[1:]), dtype=c.dtype) for c in columns]
        if self.size + count > self.capacity:
            while self.size + count > self.capacity:
                self.capacity *= 2
            grown = [torch.empty((self.capacity, *b.shape[1:]), dtype=b.dtype) for b in self.buffers]
            for new, old in zip(grown, self.buffers):
                new[:self.size] = old[:self.size]
            self.buffers = grown
        for buffer, column in zip(self.buffers, columns):
            buffer[self.size:self.size + count] = column
        self.size += count

    def columns(self) -> list[torch.Tensor]:
        return [b[:self.size] for b in self.buffers]

    def keep(self, mask: torch.Tensor) -> None:
        """Drop the rows where `mask` (size,) is False."""
        kept = [c[mask] for c in self.columns()]
        self.size = 0
        if kept and len(kept[0]):
            self.add(*kept)


class _Lookup:
    """Append-only (key -> row of values) store with vectorized lookups (keys sorted lazily)."""

    def __init__(self) -> None:
        self.store = Columns()
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None

    def add(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.store.add(keys, values)
        self._sorted = None

    def find(self, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (...) -> (found (...), row into `stored` (...), any row where not found)."""
        if self.store.size == 0:
            return torch.zeros_like(keys, dtype=torch.bool), torch.zeros_like(keys)
        if self._sorted is None:
            every = self.store.columns()[0]
            order = torch.argsort(every)
            self._sorted = (every[order], order)
        ordered, order = self._sorted
        place = torch.searchsorted(ordered, keys).clamp(max=len(ordered) - 1)
        return ordered[place] == keys, order[place]

    @property
    def stored(self) -> torch.Tensor:
        return self.store.columns()[1]


class Table:
    """Float32 results of the images re-run so far: per layer, every chosen unit's score for each image that
    passed the layer (by dataset index), and (row, col) for the (image, unit) pairs that were asked for."""

    def __init__(self, layers: Sequence[LayerPlan]) -> None:
        self.units = {lp.name: len(lp.channels) for lp in layers}
        self.scores = {lp.name: _Lookup() for lp in layers}
        self.places = {lp.name: _Lookup() for lp in layers}
        self.depth: dict[int, int] = {}  # image -> position of the deepest layer it has run through

    def fill(self, name: str, rows: Rows) -> None:
        """Copy into `rows` every float32 score and position known for its valid slots."""
        units = torch.arange(rows.indices.shape[0])[:, None].expand_as(rows.indices)
        found, at = self.scores[name].find(rows.indices)
        found &= rows.valid
        if bool(found.any()):
            rows.s32[found] = self.scores[name].stored[at[found], units[found]]
            rows.found |= found
        placed, at = self.places[name].find(rows.indices * self.units[name] + units)
        placed &= rows.valid
        if bool(placed.any()):
            where = self.places[name].stored[at[placed]]
            rows.rows[placed], rows.cols[placed] = where[:, 0], where[:, 1]
            rows.placed |= placed


class Sidecar(Collector):
    """A collector whose results live on the object, not in a state: for the passes a bf16 scan's certificate runs
    locally once (never checkpointed nor merged)."""

    def empty(self, plan: Plan) -> State:
        return {}

    def merge(self, a: State, b: State) -> State:
        return {}


class _Pairs(Sidecar):
    """Stores each re-run batch's float32 scores in the `Table`, and the positions of every row slot (unit, input)
    whose input is in the batch and has none yet: later rounds may ask about any of them (its own state is
    empty)."""

    name = "rescore"

    def __init__(self, table: Table, rows: dict[str, Rows]) -> None:
        self.table, self.rows = table, rows

    def update(self, state: State, batch: LayerBatch) -> None:
        name = batch.plan.name
        here = batch.indices.cpu()
        self.table.scores[name].add(here, batch.score.cpu())
        r = self.rows.get(name)
        if r is None:
            return
        units, slots = torch.nonzero(r.valid & ~r.placed, as_tuple=True)
        if units.numel() == 0:
            return
        images = r.indices[units, slots]
        ordered, order = torch.sort(here)
        place = torch.searchsorted(ordered, images).clamp(max=len(ordered) - 1)
        hit = ordered[place] == images
        if not bool(hit.any()):
            return
        device = batch.output.device
        rr, cc = batch.positions(order[place[hit]].to(device), units[hit].to(device))
        rr, cc = rr.cpu(), cc.cpu()
        keys = images[hit] * self.table.units[name] + units[hit]
        self.table.places[name].add(keys, torch.stack([rr, cc], 1))
        u, s = units[hit], slots[hit]
        r.rows[u, s], r.cols[u, s] = rr, cc
        r.placed[u, s] = True


RunnerFactory = Callable[[Sequence[LayerPlan], int, Collector], AbstractContextManager[Any]]


def _fillers(rows: dict[str, Rows], depth_of: dict[str, int], table: Table, k: int) -> list[tuple[int, int, int]]:
    """Images not yet re-scored, likeliest to be asked for next first: (size, deepest layer position, index), ranked
    by how close their best bf16 score comes to its unit's k-th bf16 value (relative)."""
    best: dict[int, tuple[float, int, int]] = {}
    for name, r in rows.items():
        valid = r.valid & ~r.found
        if not bool(valid.any()):
            continue
        masked = torch.where(r.valid, r.s16, torch.full_like(r.s16, float("-inf")))
        kth = masked.topk(min(k, masked.shape[1]), dim=1).values[:, -1:]
        close = ((r.s16 - kth) / kth.abs().clamp(min=1e-30))[valid]
        depth = depth_of[name]
        for image, size, near in zip(r.indices[valid].tolist(), r.sizes[valid].tolist(), close.tolist()):
            if table.depth.get(image, -1) >= depth:
                continue
            old = best.get(image)
            if old is None or near > old[0]:
                best[image] = (near, size, depth if old is None else max(depth, old[2]))
            elif depth > old[2]:
                best[image] = (old[0], old[1], depth)
    ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))
    return [(size, depth, image) for image, (_, size, depth) in ranked]


def rescore(runner_factory: RunnerFactory, layers: Sequence[LayerPlan], rows: dict[str, Rows], table: Table,
            requests: dict[str, torch.Tensor], *, positions: bool = False, k: int = 1) -> dict[str, Any]:
    """Make the float32 score of every requested valid slot known (`requests`: layer -> (U, M) bool mask), re-running
    in float32 the images that have not yet run through its layer (with `positions`, also those whose pair has no
    position yet), then fill every layer's rows from the table.

    The last batch of each size is filled with the images likeliest to be asked for in a later round (see
    `_fillers`, `k` the top-k size) rather than padded with copies: that batch runs anyway.

    `runner_factory(layers, batch_size, collector)` gives a float32 `ShardRunner` context over the dataset for the
    layers `layers` (it stops after the last). Returns the images re-run and counts of batches and padded slots.
    """
    depth_of = {lp.name: i for i, lp in enumerate(layers)}
    need: dict[int, tuple[int, int]] = {}  # image -> (batch size, deepest layer position)
    for name, mask in requests.items():
        r = rows[name]
        open_ = mask & r.valid & ~(r.placed if positions else r.found)
        units, slots = torch.nonzero(open_, as_tuple=True)
        if units.numel() == 0:
            continue
        images = r.indices[units, slots]
        depth = depth_of[name]
        for image, size in zip(images.tolist(), r.sizes[units, slots].tolist()):
            if not positions and table.depth.get(image, -1) >= depth:
                continue
            old = need.get(image)
            need[image] = (size, depth if old is None else max(old[1], depth))
    counts: dict[str, Any] = {"images": set(need), "batches": 0, "padding": 0}
    collector = _Pairs(table, rows)
    fillers = _fillers(rows, depth_of, table, k) if need else []
    for size in sorted({s for s, _ in need.values()}):
        group = sorted((-d, i) for i, (s, d) in need.items() if s == size)  # deepest first, then by index
        runs: list[tuple[int, list[int]]] = []  # (depth, order) with consecutive batches of one depth together
        for start in range(0, len(group), size):
            chunk = group[start:start + size]
            depth = -chunk[0][0]
            order = [i for _, i in chunk]
            if len(order) < size:
                extra = [i for s, d, i in fillers if s == size and d <= depth and i not in need][:size - len(order)]
                counts["images"].update(extra)
                order += extra
            counts["padding"] += size - len(order)
            order += [order[0]] * (size - len(order))
            if runs and runs[-1][0] == depth:
                runs[-1][1].extend(order)
            else:
                runs.append((depth, order))
            counts["batches"] += 1
        for depth, order in runs:
            with runner_factory(layers[:depth + 1], size, collector) as runner:
                runner.run_items(order)
            for image in order:
                table.depth[image] = max(table.depth.get(image, -1), depth)
    for name, r in rows.items():
        table.fill(name, r)
    return counts
