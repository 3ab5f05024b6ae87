"""The streaming pass: shards of the dataset through the frozen network, every chosen layer reduced inside its
hook (nothing copied, nothing stored), collector states merged in shard order and checkpointed per shard.

A shard is `plan.shard_size` consecutive items; its batches are the same whichever engine runs it, so local and Ray
runs compute the same numbers, and merging shard states left to right in shard order makes them the same bits.
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..accel import exact_pools, fusions, network_precision, probe, strided_pools
from ..data import Dataset, batches
from ..errors import CheckpointError, ConvscopeError, OptionError, UnitOutOfRangeError
from ..hooks import capture, frozen, get_module, split_call
from ..layers import parse_unit
from ._collect import Collector, LayerBatch, LayerPlan, Plan
from ._stats_state import to_device

__all__ = ["scan_layers", "resolve_units", "ShardRunner", "Accumulator", "run_local", "LAYER_TYPES"]

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
               nn.Linear)
"""What `layers="all"` means: the output of every call of these modules."""

Units = None | Sequence[int] | str | dict[str, Sequence[int] | str] | Sequence[str]


def scan_layers(module: nn.Module, example: torch.Tensor, layers: str | Sequence[str]
                ) -> list[tuple[str, str, int, tuple[int, ...]]]:
    """Resolve `layers` ("all", or names `path` / `path#k`) on a probe pass -> [(name, path, call, shape without
    batch)] in the order the network runs them. Unknown, ambiguous or non-tensor layers raise."""
    from ..receptive import _select, module_calls

    calls = module_calls(module, example)
    if isinstance(layers, str) and layers == "all":
        wanted = [name for name, path, _, shape in calls
                  if shape is not None and isinstance(get_module(module, path), LAYER_TYPES)]
        if not wanted:
            raise ConvscopeError(f"{type(module).__name__} has no convolution or linear layer for layers='all'")
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        if not names:
            raise OptionError("layers is empty: give layer names or 'all'")
        wanted = list(dict.fromkeys(_select(calls, names, module)))
    found = {name: (path, k, shape) for name, path, k, shape in calls}
    out = []
    for name in wanted:
        path, k, shape = found[name]
        if shape is None:
            raise ConvscopeError(f"layer {name!r} does not return a tensor; pick a tensor layer")
        if len(shape) not in (2, 4):
            raise ConvscopeError(f"layer {name!r} outputs shape {tuple(shape)}; scans read (B, C, H, W) or (B, F)")
        out.append((name, path, k, tuple(int(s) for s in shape[1:])))
    order = {name: i for i, (name, *_) in enumerate(calls)}
    return sorted(out, key=lambda item: order[item[0]])


def _channel_list(text: str | Sequence[int], name: str, channels: int) -> tuple[int, ...]:
    if isinstance(text, str):
        picked: list[int] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, dash, high = part.partition("-")
            if not low.isdigit() or (dash and not high.isdigit()):
                raise OptionError(f"units {text!r}: write channels as '0-15' or '3,5,9'")
            picked.extend(range(int(low), int(high) + 1) if dash else [int(low)])
    else:
        picked = [int(c) for c in text]
    for c in picked:
        if not 0 <= c < channels:
            raise UnitOutOfRangeError(f"unit {name}:{c} is out of range; layer {name!r} has channels "
                                      f"0..{channels - 1}")
    if not picked:
        raise OptionError(f"units for layer {name!r} select no channel")
    return tuple(sorted(set(picked)))


def resolve_units(units: Units, layers: Sequence[tuple[str, str, int, tuple[int, ...]]]) -> list[LayerPlan]:
    """`units` -> one `LayerPlan` per layer with its chosen channels.

    `None`: every channel. A channel list or string ("0-15", "3,5"): those channels of every layer. A dict
    `{layer: channels}`: per layer (layers not in it keep all channels). A list of unit strings ("conv2:5"):
    those units (layers with none listed keep all channels).
    """
    names = [name for name, *_ in layers]
    per_layer: dict[str, Any] = {}
    if isinstance(units, dict):
        per_layer = dict(units)
    elif isinstance(units, (list, tuple)) and units and all(isinstance(u, str) and ":" in u for u in units):
        for text in units:
            unit = parse_unit(text)
            if unit.row is not None:
                raise OptionError(f"unit {text!r}: a scan ranks whole channels; drop the @ROW,COL part")
            per_layer.setdefault(unit.layer, []).append(unit.channel)
    for layer in per_layer:
        if layer not in names:
            raise OptionError(f"units name layer {layer!r}, which is not among the scanned layers {names}")
    plans = []
    for name, path, k, shape in layers:
        channels = shape[0]
        choice = per_layer.get(name) if per_layer or isinstance(units, dict) else units
        chosen = tuple(range(channels)) if choice is None else _channel_list(choice, name, channels)
        plans.append(LayerPlan(name, path, k, shape, chosen))
    return plans


def _bf16_network(net: nn.Module, example: torch.Tensor, layers: Sequence[str]) -> nn.Module:
    """A private copy of the network for the bf16 pass: eval-mode BatchNorm folded into the convolution before it
    (pairs touching a scanned layer left alone; checked on a probe, see `accel.fusions`) and 4-D weights
    channels-last.

    Folding saves a rounding to bfloat16 per pair (more accurate candidates) and the norm's pass over memory
    (MobileNetV2 runs 1.5x faster). Non-overlapping max-pools become maxima of strided views (`accel.strided_pools`:
    the same values, fashion-cnn's bf16 pass 15% faster). Channels-last weights keep every map channels-last: under autocast a
    convolution's output takes its weight's memory format when the input's is ambiguous (one input channel, as
    Fashion-MNIST's), and bfloat16 max-pools and reductions over NCHW maps run up to 10x slower. The caller's
    module is untouched; a module that cannot be copied runs as it is (correct, only slower)."""
    try:
        clone = copy.deepcopy(net)
    except Exception:
        return net
    try:
        seen = probe(clone, example[:1], layers, stop=bool(layers))
    except RuntimeError:  # the model does not run on the probe: leave it unfused (the scan reports its own errors)
        seen = None
    for path, module in (fusions(clone, seen) if seen is not None else {}).items():
        clone.set_submodule(path, module)
    strided_pools(clone)
    return clone.to(memory_format=torch.channels_last)


class ShardRunner:
    """Runs shards of a plan on one process: the frozen network (entered once), a capture that hands every chosen
    layer's output to the collectors inside its hook, the forward stopped after the deepest chosen layer, and each
    collector's `end_batch` after it (where `Staged` collectors fold the batch into all layers' units at once)."""

    def __init__(self, spec: Any, dataset: Dataset, plan: Plan, collectors: Sequence[Collector]) -> None:
        self.spec, self.dataset, self.plan, self.collectors = spec, dataset, plan, list(collectors)
        self._by_call = {(lp.path, lp.call): lp for lp in plan.layers}
        self._needs = set().union(*(c.needs for c in self.collectors))
        # Layers collectors read raw (pooled codes): captured beside the plan's, handed over through `capture`.
        self._extra: dict[tuple[str, int], list[tuple[Collector, str]]] = {}
        for collector in self.collectors:
            for name in collector.layers:
                base, k = split_call(name)
                self._extra.setdefault((base, k or 0), []).append((collector, name))
        names = [lp.name for lp in plan.layers] + [n for c in self.collectors for n in c.layers]
        self._names = list(dict.fromkeys(names))
        self._states: dict[str, Any] = {}
        self._batch = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> "ShardRunner":
        stack = self._stack
        net = stack.enter_context(frozen(self.spec.module))
        if self.plan.precision == "bf16":
            net = _bf16_network(net, self.spec.example_input(), self._names)
        else:  # the model as written (its bits are the result), only its max-pools in the faster layout (exact)
            stack.enter_context(exact_pools(net))
        stack.enter_context(torch.inference_mode())
        self._capture = stack.enter_context(capture(net, self._names, stop=True, consume=self._consume))
        self._device = self.spec.device
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _consume(self, path: str, call: int, output: torch.Tensor) -> None:
        if self._batch is None:
            return
        for collector, name in self._extra.get((path, call), ()):
            collector.capture(self._states[collector.name], name, output)
        layer = self._by_call.get((path, call))
        if layer is None:
            return
        indices, labels = self._batch
        view = LayerBatch(layer, self.plan.by, output, indices, labels)
        view.reduce(self._needs)
        for collector in self.collectors:
            collector.update(self._states[collector.name], view)

    def forward(self, inputs: torch.Tensor) -> None:
        bf16 = self.plan.precision == "bf16"
        if bf16 and inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with network_precision(self.plan.precision, inputs.device):
            self._capture.run(inputs)

    def run(self, shard: int, on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Scan shard `shard` -> {"states": {collector: state on the CPU}, "skipped": [[item, reason]], "items"}.
        `on_batch(n)` is called after each batch with the number of dataset items it covered."""
        order = self.plan.shard_range(shard)
        return self.run_items(order, on_batch)

    def run_items(self, order: Sequence[int], on_batch: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Scan the dataset items `order` (in batches of the plan's size) into fresh collector states."""
        order = [int(i) for i in order]
        position = {item: p for p, item in enumerate(order)}
        self._states = {c.name: c.empty(self.plan) for c in self.collectors}
        before = len(self.dataset.skipped)
        covered = 0
        for batch in batches(self.dataset, self.spec, self.plan.batch_size, order=order):
            self._batch = (batch.indices.to(self._device), batch.labels)
            for collector in self.collectors:
                collector.start_batch(self._states[collector.name], batch.inputs, batch.indices, batch.labels)
            try:
                self.forward(batch.inputs)
            finally:
                self._batch = None
            for collector in self.collectors:
                collector.end_batch(self._states[collector.name])
            end = position[int(batch.indices[-1])] + 1
            if on_batch is not None:
                on_batch(end - covered)
            covered = end
        if on_batch is not None and covered < len(order):
            on_batch(len(order) - covered)  # trailing unreadable items
        skipped = [[str(item), str(reason)] for item, reason in self.dataset.skipped[before:]]
        states = {c.name: to_device(c.finish(self._states[c.name]), "cpu") for c in self.collectors}
        self._states = {}
        return {"states": states, "skipped": skipped, "items": len(order)}


class Accumulator:
    """Merges shard results in shard order and checkpoints the running state after each (temp file + rename, so a
    crash leaves the previous checkpoint whole). `states`, `skipped`, `done` (shards merged)."""

    FORMAT = "convscope-scan/2"  # 2: bf16 candidate states keep each layer's band

    def __init__(self, plan: Plan, collectors: Sequence[Collector], fingerprint: str,
                 checkpoint: str | Path | None) -> None:
        self.plan, self.collectors, self.fingerprint = plan, list(collectors), fingerprint
        self.path = Path(checkpoint) if checkpoint is not None else None
        self.states = {c.name: c.empty(plan) for c in self.collectors}
        self.skipped: list[list[str]] = []
        self.done = 0
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated or foreign file
            raise CheckpointError(f"checkpoint {str(self.path)!r} cannot be read ({type(error).__name__}); delete it "
                                  "to start over") from None
        if not isinstance(saved, dict) or not str(saved.get("format", "")).startswith("convscope-scan/"):
            raise CheckpointError(f"checkpoint {str(self.path)!r} is not a convscope scan checkpoint")
        if saved["format"] != self.FORMAT:
            raise CheckpointError(f"checkpoint {str(self.path)!r} was written by another version of convscope "
                                  f"({saved['format']}, this one reads {self.FORMAT}); delete it to start over")
        if saved["fingerprint"] != self.fingerprint:
            raise CheckpointError(f"checkpoint {str(self.path)!r} belongs to a different scan (model, data, layers "
                                  "or options differ); delete it or choose another --checkpoint path")
        self.states, self.skipped, self.done = saved["states"], saved["skipped"], int(saved["done"])

    def add(self, shard: int, result: dict[str, Any]) -> None:
        if shard != self.done:
            raise RuntimeError(f"shard {shard} merged out of order (expected {self.done})")
        self.states = {c.name: c.merge(self.states[c.name], result["states"][c.name]) for c in self.collectors}
        self.skipped.extend(result["skipped"])
        self.done += 1
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save({"format": self.FORMAT, "fingerprint": self.fingerprint, "done": self.done,
                    "states": self.states, "skipped": self.skipped}, temp)
        os.replace(temp, self.path)


def run_local(spec: Any, dataset: Dataset, plan: Plan, collectors: Sequence[Collector], acc: Accumulator,
              progress: Callable[[int, int], None] | None = None) -> None:
    """Scan the shards `acc` has not merged yet, one after another in this process."""
    done_items = sum(len(plan.shard_range(s)) for s in range(acc.done))
    if progress is not None:
        progress(done_items, plan.items)

    def on_batch(n: int) -> None:
        nonlocal done_items
        done_items += n
        if progress is not None:
            progress(done_items, plan.items)

    if acc.done >= plan.shards:
        return
    with ShardRunner(spec, dataset, plan, collectors) as runner:
        for shard in range(acc.done, plan.shards):
            acc.add(shard, runner.run(shard, on_batch))
