"""Float32 re-scoring of chosen (unit, input) pairs, bit-identical to what a float32 scan computes for them.

A float32 image's activations depend on the size of the batch it runs in (oneDNN and the GEMMs pick their blocking
by batch size; fashion-cnn's conv2 differs at batch 1, fc1 below 16 or 32), not on the other images in the batch
nor on its place in it (`tests/test_analysis_bf16.py` checks both). So every image is re-run in a batch of the
size it first ran in, the last batch of a size padded with copies of its first image, and each batch runs only as
deep as the deepest layer any of its images is needed for: images are sorted by that depth, deepest first, so
images needed only for early layers fill the batches of deeper ones instead of being padded, and the shallow tail
stops early. Positions (row, col) are computed only for the requested pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch

from ._collect import Collector, LayerBatch, LayerPlan, Plan, State

__all__ = ["Rows", "rescore"]


@dataclass
class Rows:
    """One layer's inputs under consideration, as (U, M) tensors per chosen unit (empty slots: index -1).

    From the bf16 pass: `indices`, `s16` (bfloat16 score, as float32), `sizes` (the batch size the input ran in),
    `labels`, and `floor` (U,): the best bf16 score of any input left out of the row (-inf: none). Filled by
    `rescore`: `found` (re-scored), `s32` (float32 score), `rows`, `cols` (first spatial max; -1 without space).
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

    @classmethod
    def make(cls, indices: torch.Tensor, s16: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor,
             floor: torch.Tensor) -> "Rows":
        minus = torch.full_like(indices, -1)
        return cls(indices, s16.float(), sizes, labels, floor.float(), torch.zeros_like(indices, dtype=torch.bool),
                   torch.zeros_like(s16, dtype=torch.float32), minus, minus.clone())

    @property
    def valid(self) -> torch.Tensor:
        return self.indices >= 0


class _Pairs(Collector):
    """Writes the float32 score and position of each pending (unit, slot) pair into its layer's `Rows` as the
    pair's image passes (its state is empty: the results go straight into the rows)."""

    name = "rescore"

    def __init__(self, pending: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]], rows: dict[str, Rows]
                 ) -> None:
        self.pending, self.rows = pending, rows

    def empty(self, plan: Plan) -> State:
        return {}

    def update(self, state: State, batch: LayerBatch) -> None:
        got = self.pending.get(batch.plan.name)
        if got is None:
            return
        units, slots, images = got
        here = batch.indices.cpu()
        ordered, order = torch.sort(here)
        place = torch.searchsorted(ordered, images).clamp(max=len(ordered) - 1)
        hit = ordered[place] == images
        if not bool(hit.any()):
            return
        b = order[place[hit]].to(batch.output.device)
        u = units[hit].to(batch.output.device)
        scores = batch.score[b, u].cpu()
        r, c = batch.positions(b, u)
        rows = self.rows[batch.plan.name]
        uu, ss = units[hit], slots[hit]
        rows.s32[uu, ss] = scores
        rows.rows[uu, ss] = r.cpu()
        rows.cols[uu, ss] = c.cpu()
        rows.found[uu, ss] = True

    def merge(self, a: State, b: State) -> State:
        return {}


RunnerFactory = Callable[[Sequence[LayerPlan], int, Collector], AbstractContextManager[Any]]


def rescore(runner_factory: RunnerFactory, layers: Sequence[LayerPlan], rows: dict[str, Rows],
            requests: dict[str, torch.Tensor]) -> dict[str, int]:
    """Re-score in float32 every requested, valid, not yet found slot (`requests`: layer -> (U, M) bool mask).

    `runner_factory(layers, batch_size, collector)` gives a float32 `ShardRunner` context over the dataset for the
    layers `layers` (it stops after the last). Returns counts: images re-run, batches, padded slots.
    """
    depth_of = {lp.name: i for i, lp in enumerate(layers)}
    pending: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    need: dict[int, tuple[int, int]] = {}  # image -> (batch size, deepest layer position)
    for name, mask in requests.items():
        r = rows[name]
        units, slots = torch.nonzero(mask & r.valid & ~r.found, as_tuple=True)
        if units.numel() == 0:
            continue
        images = r.indices[units, slots]
        pending[name] = (units, slots, images)
        depth = depth_of[name]
        for image, size in zip(images.tolist(), r.sizes[units, slots].tolist()):
            old = need.get(image)
            need[image] = (size, depth if old is None else max(old[1], depth))
    counts = {"images": len(need), "batches": 0, "padding": 0}
    if not need:
        return counts
    collector = _Pairs(pending, rows)
    for size in sorted({s for s, _ in need.values()}):
        group = sorted((-d, i) for i, (s, d) in need.items() if s == size)  # deepest first, then by index
        chunks = [group[start:start + size] for start in range(0, len(group), size)]
        runs: list[tuple[int, list[int]]] = []  # (depth, order) with consecutive chunks of one depth together
        for chunk in chunks:
            depth = -chunk[0][0]
            order = [i for _, i in chunk]
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
    return counts
