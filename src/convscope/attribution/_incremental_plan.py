"""Where an occluder changes each feature map, for a batch of windows: the engine's geometry, computed once.

For every input-dependent 4-D step and every window, `plan_batch` tracks the rectangle of positions that may differ
from the clean activation (`changed`, [r0, r1) x [c0, c1)) and chooses what to compute:

- `patch`: an extent of one fixed size per step (so the windows batch), placed over each window's changed rectangle
  and clamped inside the map; positions of the extent outside `changed` are recomputed and equal the clean values.
- `full`: the whole map, when the extent would cover at least `full_at` of it (deep layers, whose footprint spans
  the map: Krypton's projective-field threshold) or when an input is already full.

A sliding-window op (kernel k, stride s, padding p, dilation d) changes output row i when its receptive field
[i*s - p, i*s - p + (k-1)*d] meets the changed input rows; pointwise steps keep the rectangle; merge steps take the
union of their operands'.

The plan also holds the gather indices (`_incremental_gather`) that assemble each step's input slices, so every
image of the input batch reuses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ._incremental_gather import gather_index
from ._incremental_graph import Program

__all__ = ["Region", "BatchPlan", "plan_batch"]


@dataclass
class Region:
    """What a step holds for each window of a batch: a patch at `offset` (N, 2) of `size`, or the full map."""

    mode: str  # "patch" | "full"
    shape: tuple[int, int]
    changed: np.ndarray | None = None  # (N, 4) r0, r1, c0, c1
    offset: np.ndarray | None = None  # (N, 2) top-left row, col of the extent
    size: tuple[int, int] | None = None


@dataclass
class BatchPlan:
    """Regions and gather indices for one batch of windows.

    `gathers[(step, dep)]` is the (N*h*w,) index assembling `dep`'s values for `step` (an input slice with halo for
    a window step, the union extent for a merge step, the whole map where a full step consumes a patch)."""

    count: int
    regions: dict[str, Region] = field(default_factory=dict)
    gathers: dict[tuple[str, str], tuple[torch.Tensor, tuple[int, int]]] = field(default_factory=dict)


def _window_rows(lo: np.ndarray, hi: np.ndarray, k: int, s: int, p: int, d: int, out: int):
    """Output rows [lo', hi') whose receptive field meets input rows [lo, hi); never empty."""
    new_lo = np.maximum(-((-(lo + p - (k - 1) * d)) // s), 0)
    new_hi = np.minimum((hi - 1 + p) // s + 1, out)
    new_lo = np.minimum(new_lo, out - 1)
    new_hi = np.maximum(new_hi, new_lo + 1)
    return new_lo, new_hi


def _extent(changed: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    h = int((changed[:, 1] - changed[:, 0]).max())
    w = int((changed[:, 3] - changed[:, 2]).max())
    rows = np.clip(changed[:, 0], 0, shape[0] - h)
    cols = np.clip(changed[:, 2], 0, shape[1] - w)
    return np.stack([rows, cols], 1), (h, w)


def _patch_or_full(changed: np.ndarray, shape: tuple[int, int], full_at: float) -> Region:
    offset, size = _extent(changed, shape)
    if size[0] * size[1] >= full_at * shape[0] * shape[1]:
        return Region("full", shape)
    return Region("patch", shape, changed, offset, size)


def plan_batch(program: Program, shapes: dict[str, tuple[int, int]], windows: np.ndarray, window_size: tuple[int, int],
               needed: set[str], full_at: float, device: torch.device) -> BatchPlan:
    """Plan one batch. `windows` (N, 4) are the occluded rectangles in input pixels (clipped to the image),
    `window_size` the unclipped window (the input step's extent), `shapes` the clean spatial size of 4-D steps."""
    plan = BatchPlan(len(windows))
    regions = plan.regions
    for step in program.steps:
        if step.name not in needed or step.kind in ("const", "shape"):
            continue
        shape = shapes.get(step.name)
        if step.kind == "input":
            size = (min(window_size[0], shape[0]), min(window_size[1], shape[1]))
            changed = windows.astype(np.int64)
            offset = np.stack([np.clip(changed[:, 0], 0, shape[0] - size[0]),
                               np.clip(changed[:, 2], 0, shape[1] - size[1])], 1)
            regions[step.name] = Region("patch", shape, changed, offset, size)
            continue
        inputs = [regions[d] for d in step.deps if d in regions]
        if step.kind == "full" or shape is None or any(r.mode == "full" for r in inputs):
            regions[step.name] = Region("full", shape)
        elif step.kind == "pointwise":
            regions[step.name] = inputs[0]
        elif step.kind == "merge":
            stacked = np.stack([r.changed for r in inputs])  # (inputs, N, 4)
            changed = np.stack([stacked[:, :, 0].min(0), stacked[:, :, 1].max(0),
                                stacked[:, :, 2].min(0), stacked[:, :, 3].max(0)], 1)
            regions[step.name] = _patch_or_full(changed, shape, full_at)
        elif step.kind == "window":
            g, src = step.window, inputs[0]
            rows = _window_rows(src.changed[:, 0], src.changed[:, 1], g.kernel[0], g.stride[0], g.padding[0],
                                g.dilation[0], shape[0])
            cols = _window_rows(src.changed[:, 2], src.changed[:, 3], g.kernel[1], g.stride[1], g.padding[1],
                                g.dilation[1], shape[1])
            regions[step.name] = _patch_or_full(np.stack([rows[0], rows[1], cols[0], cols[1]], 1), shape, full_at)
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(step.kind)
        _add_gathers(plan, step, device)
    return plan


def _add_gathers(plan: BatchPlan, step, device: torch.device) -> None:
    """Record the gathers `step` needs from its patch-mode inputs."""
    region = plan.regions[step.name]
    for dep in step.deps:
        src = plan.regions.get(dep)
        if src is None or src.mode != "patch":
            continue
        if region.mode == "full" or step.kind == "full":
            out_offset, out_size, fill = np.zeros_like(src.offset), src.shape, None
        elif step.kind == "pointwise":
            continue
        elif step.kind == "merge":
            if np.array_equal(src.offset, region.offset) and src.size == region.size:
                continue  # the operand's patch already is the union extent
            out_offset, out_size, fill = region.offset, region.size, None
        else:  # a window step: its extent's receptive field, partly outside the map where it pads
            g = step.window
            out_offset = region.offset * np.array(g.stride) - np.array(g.padding)
            out_size = tuple((region.size[i] - 1) * g.stride[i] + (g.kernel[i] - 1) * g.dilation[i] + 1 for i in (0, 1))
            fill = g.fill
        index = gather_index(src.shape, src.offset, src.size, out_offset, out_size, fill)
        plan.gathers[(step.name, dep)] = (torch.from_numpy(index).to(device), out_size)
