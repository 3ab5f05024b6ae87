"""What a dataset scan computes per batch, and the interface every view of it implements.

A scan runs the network over a dataset once; for every batch and every chosen layer it hands the layer's live output
to each `Collector` through a `LayerBatch`, which computes the per-input reductions the collectors share (spatial
peak, per-input sums) once. A collector's state is a dict of tensors and plain values (it pickles, checkpoints with
`torch.save` and loads with `weights_only=True`), and `merge` combines the states of consecutive shards exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import torch
import torch.nn.functional as F

__all__ = ["LayerPlan", "Plan", "LayerBatch", "Collector", "sort_keys", "EMPTY_KEY", "WORK", "Staged"]

By = Literal["max", "mean"]
State = dict[str, Any]

EMPTY_KEY = torch.iinfo(torch.int64).min
CHUNK_BYTES = 4 << 20
_LOW32 = 0xFFFFFFFF
WORK = "_work"
"""The key under which a collector that defers its updates (`Staged`) keeps its working state during a run."""


@dataclass(frozen=True)
class LayerPlan:
    """One captured layer: `name` (`path` or `path#k`), its module `path` and call `call`, the output `shape`
    without the batch axis ((C, H, W) or (F,)), and the chosen `channels` (sorted, unique)."""

    name: str
    path: str
    call: int
    shape: tuple[int, ...]
    channels: tuple[int, ...]

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3

    @property
    def all_channels(self) -> bool:
        return self.channels == tuple(range(self.shape[0]))


@dataclass(frozen=True)
class Plan:
    """Everything that fixes a scan's result (it is hashed into the checkpoint's fingerprint).

    `items` is the number of dataset items visited (`limit` applied); shards are `shard_size` consecutive items
    (a multiple of `batch_size`, so a shard's batches are the same whoever runs it).
    """

    layers: tuple[LayerPlan, ...]
    k: int
    by: By
    topk: bool
    stats: bool
    batch_size: int
    shard_size: int
    items: int
    precision: Literal["float32", "bf16"]
    candidates: int = 0  # bf16: candidates kept per unit (0 in float32)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shards(self) -> int:
        return max(1, -(-self.items // self.shard_size))

    def shard_range(self, shard: int) -> range:
        start = shard * self.shard_size
        return range(start, min(self.items, start + self.shard_size))

    def describe(self) -> dict[str, Any]:
        return {
            "layers": {lp.name: {"shape": list(lp.shape), "channels": _ranges(lp.channels)} for lp in self.layers},
            "k": self.k, "by": self.by, "topk": self.topk, "stats": self.stats, "batch_size": self.batch_size,
            "shard_size": self.shard_size, "items": self.items, "precision": self.precision,
            "candidates": self.candidates, **self.extra,
        }


def _ranges(channels: tuple[int, ...]) -> str:
    """(0, 1, 2, 5) -> "0-2,5": a short, exact record of a channel selection."""
    parts, start = [], None
    for i, c in enumerate(channels):
        if start is None:
            start = c
        if i + 1 == len(channels) or channels[i + 1] != c + 1:
            parts.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(parts)


def sort_keys(values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """float32 values (U, N) and int64 dataset indices (N,) or (U, N) -> int64 keys (U, N) whose descending order is
    (value descending, index ascending): the one total order of every top-k in convscope.

    The float's bits are mapped to an order-preserving int32 (negative floats flipped), -0.0 counts as 0.0, and the
    index fills the low 32 bits inverted, so `torch.topk` on the keys is exact, ties included, on any device.
    """
    values = values.float() + 0.0  # -0.0 + 0.0 == +0.0: the two zeros compare equal, as floats do
    bits = values.view(torch.int32).long()
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return (ordered << 32) | (_LOW32 - indices.long().expand_as(ordered))


class LayerBatch:
    """One layer's output for one batch, valid only during the collectors' `update` calls.

    `output` is (B, C, H, W) or (B, F) (live: never change or keep it); `indices` (B,) dataset positions, `labels`
    (B,), `batch_size` the size of the batch as run (needed to re-score bf16 candidates in float32 identically).
    Reductions are computed on first use and shared: `peak` (B, U) spatial max per chosen unit, `score` (B, U)
    the ranking value (`peak`, or `mean` with `by="mean"`), `sums` / `squares` (B, U) per-input float32 sums of
    values and of squares, `positions(b, c)` (row, col) of the first spatial max in row-major order.

    Each reduction reads the output once, in the form that is cheap for its layout: a float32 NCHW output (the
    float32 pass) is reduced with `amax`, `sum` and `vector_norm` over the spatial axes (no temporary); a
    channels-last bfloat16 output (the bf16 pass) takes its peak from a max-pool over the whole map and its sums in
    bfloat16 (approximate statistics are what a bf16 pass promises). Nothing is computed that no collector asks for.
    """

    def __init__(self, plan: LayerPlan, by: By, output: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor
                 ) -> None:
        self.plan, self.by, self.output = plan, by, output
        self.indices, self.labels = indices, labels
        self.batch_size = int(output.shape[0])
        self._select = None if plan.all_channels else torch.tensor(plan.channels, device=output.device)

    @cached_property
    def values(self) -> torch.Tensor:
        """The output in float32 (the output itself in a float32 pass). A full copy in a bf16 pass: collectors of
        the scan itself never ask for it."""
        return self.output if self.output.dtype == torch.float32 else self.output.float()

    def _units(self, per_channel: torch.Tensor) -> torch.Tensor:
        return per_channel if self._select is None else per_channel.index_select(1, self._select)

    @cached_property
    def _flat(self) -> torch.Tensor:
        """(B, C) outputs as float32: the same tensor for every reduction of a layer without spatial axes."""
        return self._units(self.output.float())

    @cached_property
    def _nchw(self) -> bool:
        return self.output.is_contiguous()

    @cached_property
    def positions_per_input(self) -> int:
        return self.output[0, 0].numel() if self.plan.spatial else 1

    @cached_property
    def peak(self) -> torch.Tensor:
        if not self.plan.spatial:
            return self._flat
        out = self.output
        if self._nchw:
            return self._units(out.amax((2, 3)).float())
        # Channels-last (the bf16 pass): a max-pool over the whole map walks the memory in order, where amax over
        # the strided spatial axes is up to 15x slower. Both propagate NaN.
        return self._units(F.max_pool2d(out, out.shape[2:]).flatten(1).float())

    @cached_property
    def sums(self) -> torch.Tensor:
        if not self.plan.spatial:
            return self._flat
        return self._units(self.output.sum((2, 3)).float())

    @cached_property
    def squares(self) -> torch.Tensor:
        if not self.plan.spatial:
            return self._flat * self._flat
        out = self.output
        if self._nchw and out.dtype == torch.float32:  # one pass without a temporary; square of the norm, to an ulp
            return self._units(torch.linalg.vector_norm(out, dim=(2, 3)) ** 2)
        # `square` rather than `out * out`: the same roundings (one product each), but a bfloat16 channels-last map
        # squares in half the time (one operand to read).
        return self._units(out.square().sum((2, 3)).float())

    @cached_property
    def score(self) -> torch.Tensor:
        return self.peak if self.by == "max" else self.sums / self.positions_per_input

    def reduce(self, needs: set[str]) -> None:
        """Compute the reductions `needs` (of "peak", "sums", "squares") together. A big float32 NCHW output is read
        in chunks of a few images (about `CHUNK_BYTES`), so the second and third reductions read from cache: up to
        a third less time on MobileNetV2's early layers. Per-(input, unit) values are the same bits either way (each
        is one row's reduction); with `by="mean"` the sums are left whole, so the ranking value is computed exactly
        as a plain `sum` over the batch computes it."""
        wanted = [n for n in ("peak", "sums", "squares") if n in needs and n not in self.__dict__]
        out = self.output
        if (len(wanted) < 2 or self.by != "max" or not self.plan.spatial or not self._nchw
                or out.dtype != torch.float32):
            return
        per = max(1, CHUNK_BYTES // (out[0].numel() * out.element_size()))
        if per >= out.shape[0]:
            return
        got = {name: torch.empty(out.shape[:2], device=out.device) for name in wanted}
        for start in range(0, out.shape[0], per):
            chunk, part = out[start:start + per], slice(start, start + per)
            if "peak" in got:
                torch.amax(chunk, (2, 3), out=got["peak"][part])
            if "sums" in got:
                torch.sum(chunk, (2, 3), out=got["sums"][part])
            if "squares" in got:
                torch.linalg.vector_norm(chunk, dim=(2, 3), out=got["squares"][part])
        if "squares" in got:
            got["squares"] = got["squares"] ** 2
        for name, value in got.items():
            self.__dict__[name] = self._units(value)  # what the cached properties would have computed

    def positions(self, rows: torch.Tensor, units: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, col) of the first spatial max of inputs `rows` (N,) at unit positions `units` (N,) (indices into
        the chosen channels); (-1, -1) for layers without spatial axes."""
        if not self.plan.spatial or rows.numel() == 0:
            fill = torch.full_like(rows, -1)
            return fill, fill.clone()
        channels = units if self._select is None else self._select[units]
        out = self.output
        if self._nchw:  # whole rows of the (B*C, H*W) view: a plain row copy
            maps = out.view(-1, out.shape[2] * out.shape[3]).index_select(0, rows * out.shape[1] + channels)
        else:
            maps = out[rows, channels].flatten(1)  # (N, H*W)
        flat = maps.argmax(1)  # the first maximal value, in row-major order
        width = self.output.shape[3]
        return flat // width, flat % width


class Collector:
    """One view a scan computes. Subclasses implement the four steps; states are plain dicts of tensors/values.
    `needs` names the `LayerBatch` reductions `update` reads ("peak", "sums", "squares"), so the runner can compute
    them together.

    - `empty(plan)`: the state of nothing seen;
    - `update(state, batch)`: fold one layer's batch (a `LayerBatch`) into `state`, in place;
    - `merge(a, b)`: the state of `a`'s items followed by `b`'s (exact; scans merge shard states in shard order);
    - `name`: the key of its state in checkpoints.

    Optionally, `start_batch(state, inputs, indices, labels)` sees each batch before its forward pass,
    `end_batch(state)` after it (a collector may defer work from `update` to there, see `Staged`), `finish(state)`
    returns the state a run hands out, and a collector that reads layers of its own (`layers`: capture names beyond
    the plan's, e.g. pooled codes of `fc2:input`) gets their raw outputs through `capture(state, name, output)`.
    """

    name: str = "collector"
    needs: frozenset[str] = frozenset()
    layers: tuple[str, ...] = ()

    def start_batch(self, state: State, inputs: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor) -> None:
        return None

    def capture(self, state: State, name: str, output: torch.Tensor) -> None:
        return None

    def end_batch(self, state: State) -> None:
        return None

    def finish(self, state: State) -> State:
        return state

    def empty(self, plan: Plan) -> State:
        raise NotImplementedError

    def update(self, state: State, batch: LayerBatch) -> None:
        raise NotImplementedError

    def merge(self, a: State, b: State) -> State:
        raise NotImplementedError


class Staged(Collector):
    """A collector that folds a batch into the units of all layers at once, after the forward, instead of once per
    layer: with many layers (MobileNetV2 has 53) a per-layer update's few dozen small tensor operations cost more
    than the arithmetic they do.

    During a run its state holds, under `WORK`, one working state over the units of every layer concatenated in
    plan order (`flat`: tensors whose first axis is the unit, `span`: layer -> (start, stop) rows) and what
    `update` staged for the current batch (`staged`: layer -> small per-input tensors, taken while the layer's
    output is live). `end_batch` folds each run of consecutive staged layers (normally one run, all of them) with
    `fold`; `finish` splits the working state back into the per-layer states that `empty` made and `merge` reads.
    Subclasses implement `units(layer)` (a layer state's unit count), `open(layers, device)` (the working state from
    the per-layer ones), `fold(work, names, start, stop)` and `close(work, name, start, stop)` (one layer's state
    from the working one)."""

    def work(self, state: State, device: torch.device) -> dict[str, Any]:
        """The working state, made on first use from the per-layer states (on `device`)."""
        work = state.get(WORK)
        if work is None:
            names = [name for name in state if name != WORK]
            span, start = {}, 0
            for name in names:
                units = self.units(state[name])
                span[name] = (start, start + units)
                start += units
            work = {"order": names, "span": span, "staged": {}, **self.open({n: state[n] for n in names}, device)}
            state[WORK] = work
        return work

    def units(self, layer: State) -> int:
        raise NotImplementedError

    def open(self, layers: dict[str, State], device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def fold(self, work: dict[str, Any], names: list[str], start: int, stop: int) -> None:
        raise NotImplementedError

    def close(self, work: dict[str, Any], name: str, start: int, stop: int) -> State:
        raise NotImplementedError

    @staticmethod
    def rows(work: dict[str, Any], start: int, stop: int) -> dict[str, torch.Tensor]:
        """The working tensors' unit rows [start, stop) (views; the tensors themselves when that is all of them)."""
        flat = work["flat"]
        if start == 0 and stop == next(iter(flat.values())).shape[0]:
            return flat
        return {key: t[start:stop] for key, t in flat.items()}

    @staticmethod
    def store(work: dict[str, Any], out: dict[str, torch.Tensor], start: int, stop: int) -> None:
        """Make `out` (per key, the new values of unit rows [start, stop)) the working tensors' rows."""
        flat = work["flat"]
        if start == 0 and stop == next(iter(flat.values())).shape[0]:
            work["flat"] = {**flat, **out}
            return
        for key, t in out.items():
            flat[key][start:stop] = t

    def end_batch(self, state: State) -> None:
        work = state.get(WORK)
        if work is None or not work["staged"]:
            return
        runs: list[list[str]] = []
        previous = None
        for name in work["order"]:  # maximal runs of consecutive layers that ran in this batch
            if name in work["staged"]:
                if previous is None or previous not in work["staged"]:
                    runs.append([])
                runs[-1].append(name)
            previous = name
        try:
            for names in runs:
                self.fold(work, names, work["span"][names[0]][0], work["span"][names[-1]][1])
        finally:
            work["staged"] = {}

    def finish(self, state: State) -> State:
        work = state.pop(WORK, None)
        if work is None:
            return state
        return {name: self.close(work, name, *work["span"][name]) for name in work["order"]}
