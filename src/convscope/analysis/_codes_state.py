"""Pooled codes as one more view of a scan's streaming pass: every visited item's code at some layers, so t-SNE
and probes (`tsne_from_codes`, `probe_codes`) can read the pass that computed the top-k and statistics.

Code layers are named as `analysis.codes` names them (a module path, `PATH:input`, `input`) and need not be among
the scanned layers: the runner captures them too (`Collector.layers`), and the forward still stops after the
deepest captured layer. The pooling is `codes.pool_activation` / `codes.pixel_code`, so a scan's codes are the
same bits as `analysis.codes` over the same batches. Unlike top-k and statistics, codes grow with the dataset:
(items, D) float32 per layer.
"""

from __future__ import annotations

from typing import Any

import torch

from ._collect import Collector, LayerBatch, Plan, State
from .codes import PIXELS, Pool, pixel_code, pool_activation

__all__ = ["CodesCollector"]


def _whole(parts: torch.Tensor | list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """A state's column as one tensor (a shard keeps its batches as a list until merged)."""
    if isinstance(parts, torch.Tensor):
        return parts
    return torch.cat(parts) if parts else like


class CodesCollector(Collector):
    """Per visited item (in dataset order of the scan): its index, label and, per code layer, its pooled code.

    State: {"indices": (N,) int64, "labels": (N,) int64, "codes": {layer: (N, D) float32}} (lists of per-batch
    tensors within a shard). `merge` concatenates in shard order, so the result is in the order items were read."""

    name = "codes"

    def __init__(self, layers: tuple[str, ...], pool: Pool) -> None:
        self.names, self.pool = tuple(layers), pool
        self.layers = tuple(name for name in self.names if name != PIXELS)  # captured by the runner

    def empty(self, plan: Plan) -> State:
        return {"indices": [], "labels": [], "codes": {name: [] for name in self.names}}

    def start_batch(self, state: State, inputs: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor) -> None:
        state["indices"].append(indices.cpu())
        state["labels"].append(labels.cpu())
        if PIXELS in state["codes"]:
            state["codes"][PIXELS].append(pixel_code(inputs))

    def capture(self, state: State, name: str, output: torch.Tensor) -> None:
        state["codes"][name].append(pool_activation(output, self.pool))

    def update(self, state: State, batch: LayerBatch) -> None:  # code layers arrive through `capture`
        return None

    def merge(self, a: State, b: State) -> State:
        empty_long = torch.empty(0, dtype=torch.int64)
        out: dict[str, Any] = {key: torch.cat([_whole(a[key], empty_long), _whole(b[key], empty_long)])
                               for key in ("indices", "labels")}
        out["codes"] = {}
        for name in self.names:
            parts = [_whole(s["codes"][name], torch.empty(0)) for s in (a, b)]
            parts = [p for p in parts if p.numel()] or parts[:1]
            out["codes"][name] = torch.cat(parts) if len(parts) > 1 else parts[0]
        return out
