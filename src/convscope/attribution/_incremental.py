"""Incremental inference for occlusion (Nakandala et al., SIGMOD 2019, "Krypton"): recompute only what changes.

An occluder changes each feature map only inside its footprint. The engine runs the model once on the clean image,
keeping every intermediate map; then, for a batch of windows, it computes each step only on a patch around each
window's changed rectangle (`_incremental_plan`), reading the rest from the clean maps (`_incremental_gather`), and
switches to whole maps, batched, where the footprint spans (almost) the map. The numbers equal the plain batched
computation up to float rounding: a patch is computed by the same op on the same inputs, padding included.

`IncrementalEngine.build` returns None for a model the engine cannot run (untraceable, in-place tensor methods, a
unit whose layer has no node in the trace); the caller then uses the plain batched path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.fx as fx
from torch import nn

from ..hooks import capture, split_call
from ._incremental_gather import clean_table, gather, gather_index, input_index, source_table
from ._incremental_graph import (Program, UnsupportedModel, build_program, fold_batchnorm, run_clean, settle_kinds,
                                 standard_layout)
from ._incremental_plan import BatchPlan, plan_batch

__all__ = ["IncrementalEngine"]

_TARGET = "__target__"


def _layer_step(program: Program, layer: str) -> str | None:
    """The step whose value is the output of module path `layer` (`name#k` for the k-th call), or None."""
    base, k = split_call(layer)
    calls = [s.name for s in program.steps if s.module == base]
    if calls:
        return calls[k or 0] if (k or 0) < len(calls) else None
    key = base if not k else f"{base}@{k}"
    inside = [s.name for s in program.steps if key in s.stack]  # a container: its last node is its output
    return inside[-1] if inside else None


class IncrementalEngine:
    """Occluded evaluations of one model, patch by patch. Use `build`, then `run` per image."""

    def __init__(self, program: Program, target: str, full_at: float) -> None:
        self.program = program
        self.target = target
        self.needed = program.ancestors(target)
        self.done_after: dict[str, list[str]] = {}
        self.full_at = full_at
        self._settled = False
        self._plans: dict[tuple, list[BatchPlan]] = {}

    @classmethod
    def build(cls, model: nn.Module, example: torch.Tensor, layer: str | None = None,
              full_at: float = 0.8) -> IncrementalEngine | None:
        """An engine computing `model`'s output, or the output of `layer` (a unit target's layer); None if the
        engine cannot run this model. `model` must be in eval mode; `example` is one input (1, C, H, W)."""
        try:
            program = build_program(model)
        except UnsupportedModel:
            return None
        target = program.output if layer is None else _layer_step(program, layer)
        if target is None:
            return None
        fold_batchnorm(program, model, keep={target})
        engine = cls(program, target, full_at)
        env = engine.clean(example)
        if layer is not None:  # make sure the node found is what a hook on the layer sees
            with capture(model, layer) as cap:
                model(example)
                expected = cap[layer]
            got = env[target]
            if not isinstance(got, torch.Tensor) or got.shape != expected.shape or not torch.allclose(
                    got, expected, rtol=1e-3, atol=1e-4 * float(expected.abs().max()) + 1e-6):
                return None
        return engine

    def clean(self, image: torch.Tensor) -> dict[str, Any]:
        """Every step's value on the clean image (1, C, H, W)."""
        env = run_clean(self.program, image.contiguous(memory_format=torch.channels_last))
        if not self._settled:
            settle_kinds(self.program, env)
            self._settled = True
            last: dict[str, str] = {}
            for step in self.program.steps:
                if step.name in self.needed:
                    for dep in step.deps:
                        last[dep] = step.name
            for dep, step_name in last.items():
                if dep != self.target:
                    self.done_after.setdefault(step_name, []).append(dep)
        return env

    def plans(self, env: dict[str, Any], windows: np.ndarray, window_size: tuple[int, int],
              batch_size: int, device: torch.device) -> list[BatchPlan]:
        key = (windows.tobytes(), window_size, batch_size)
        if key not in self._plans:
            shapes = {name: tuple(v.shape[-2:]) for name, v in env.items()
                      if isinstance(v, torch.Tensor) and v.ndim == 4}
            plans = []
            for start in range(0, len(windows), batch_size):
                chunk = windows[start:start + batch_size]
                plan = plan_batch(self.program, shapes, chunk, window_size, self.needed, self.full_at, device)
                region = plan.regions.get(self.target)
                if region is not None and region.mode == "patch":
                    index = gather_index(region.shape, region.offset, region.size, np.zeros_like(region.offset),
                                         region.shape, None)
                    plan.gathers[(_TARGET, self.target)] = (torch.from_numpy(index).to(device), region.shape)
                input_name = self.program.steps[0].name
                inp = plan.regions[input_name]
                plan.gathers[(input_name, input_name)] = (
                    torch.from_numpy(input_index(inp.shape, chunk, inp.offset, inp.size)).to(device), inp.size)
                plans.append(plan)
            self._plans = {key: plans}
        return self._plans[key]

    def run(self, image: torch.Tensor, baseline: torch.Tensor, windows: np.ndarray, window_size: tuple[int, int],
            batch_size: int, env: dict[str, Any] | None = None) -> Iterator[torch.Tensor]:
        """For each batch of `windows` (M, 4: r0, r1, c0, c1 in pixels), the target's value on the occluded images
        (N, ...): `image` (1, C, H, W) with `baseline` (1, C, H, W) pasted inside each window. `env` is
        `clean(image)` if the caller has it already."""
        env = self.clean(image) if env is None else env
        plans = self.plans(env, windows, window_size, batch_size, image.device)
        tables: dict[str, torch.Tensor] = {}
        input_name = self.program.steps[0].name
        c = image.shape[1]
        input_rows = torch.cat([image[0].permute(1, 2, 0).reshape(-1, c), image.new_zeros(2, c),
                                baseline[0].permute(1, 2, 0).reshape(-1, c)])
        for plan in plans:
            index, size = plan.gathers[(input_name, input_name)]
            first = gather(input_rows, index, plan.count, size)
            yield _Batch(self, env, tables, plan).run(first)


class _Batch:
    """The evaluation of one batch of windows: every needed step's patch or full value."""

    def __init__(self, engine: IncrementalEngine, env: dict[str, Any], tables: dict[str, torch.Tensor],
                 plan: BatchPlan) -> None:
        self.engine, self.env, self.clean_tables, self.plan = engine, env, tables, plan
        self.values: dict[str, torch.Tensor] = {}
        self.sources: dict[str, torch.Tensor] = {}
        self.full: dict[str, torch.Tensor] = {}

    def source(self, name: str) -> torch.Tensor:
        if name not in self.sources:
            if name not in self.clean_tables:
                self.clean_tables[name] = clean_table(self.env[name])
            self.sources[name] = source_table(self.clean_tables[name], self.values[name])
        return self.sources[name]

    def slice(self, step: str, dep: str) -> torch.Tensor:
        """`dep`'s values as `step` needs them: gathered if the plan says so, else its own patch."""
        found = self.plan.gathers.get((step, dep))
        if found is None:
            return self.values[dep]
        index, size = found
        return gather(self.source(dep), index, self.plan.count, size)

    def materialized(self, step: str, dep: str) -> Any:
        region = self.plan.regions.get(dep)
        if region is None or region.mode == "full":
            return self.values[dep]
        if dep not in self.full:
            self.full[dep] = self.slice(step, dep)
        return self.full[dep]

    def run(self, first: torch.Tensor) -> torch.Tensor:
        engine, values, regions = self.engine, self.values, self.plan.regions
        for step in engine.program.steps:
            if step.name not in engine.needed:
                continue
            name, kind = step.name, step.kind
            if kind == "input":
                values[name] = first
                continue
            if kind == "const":
                values[name] = self.env[name]
                continue
            region = regions.get(name)
            if kind == "shape":
                dep = step.deps[0]
                meta = torch.empty((self.plan.count,) + tuple(self.env[dep].shape[1:]), device="meta")
                values[name] = step.fn(*fx.node.map_arg(
                    step.args, lambda n: meta if n.name == dep else values[n.name]), **step.kwargs)
                continue
            if region is None or region.mode == "full" or kind == "full":
                plain = standard_layout if kind == "full" else (lambda v: v)
                args = fx.node.map_arg(step.args, lambda n: plain(self.materialized(name, n.name))
                                       if n.name in step.deps else values[n.name])
                kwargs = fx.node.map_arg(step.kwargs, lambda n: plain(self.materialized(name, n.name))
                                         if n.name in step.deps else values[n.name])
                values[name] = step.fn(*args, **kwargs)
            elif kind == "window":
                values[name] = step.patch_fn(self.slice(name, step.deps[0]))
            else:  # pointwise or merge on patches
                def patch_of(n: fx.Node) -> Any:
                    return self.slice(name, n.name) if n.name in step.deps else values[n.name]

                values[name] = step.fn(*fx.node.map_arg(step.args, patch_of),
                                       **fx.node.map_arg(step.kwargs, patch_of))
            for dep in engine.done_after.get(name, ()):  # free what no later step reads
                values.pop(dep, None)
                self.sources.pop(dep, None)
                self.full.pop(dep, None)
        target = engine.target
        region = regions.get(target)
        if region is not None and region.mode == "patch":
            return self.slice(_TARGET, target)
        return values[target]
