"""Skip the branches of the objective's layer that the objective does not read.

An Inception block (and any layer whose output is a channel concatenation of separate branches) spends most of its
work on branches a channel objective never looks at: `channel("inception4a", 5)` reads branch 1 only, yet the
forward pass runs all four and the backward pass sends zeros through three of them. `pruned(...)` traces the layer
(its child modules as leaves) with `torch.fx`; when its output is `torch.cat([...], dim=1)` of values whose
channel ranges are known from a probe pass, the branches outside the objective's channels are replaced by zeros of
the same shape and dropped from the graph. The layer keeps its output shape; the channels the objective reads are
unchanged (checked numerically on the probe before use). Anything the tracer cannot follow is left as it is.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.fx as fx
from torch import nn

from .. import hooks

__all__ = ["pruned"]


class _ChildrenAsLeaves(fx.Tracer):
    def __init__(self, root: nn.Module):
        super().__init__()
        self.children = {id(m) for m in root.children()}

    def is_leaf_module(self, m: nn.Module, qualified_name: str) -> bool:
        return id(m) in self.children or super().is_leaf_module(m, qualified_name)


class _Recorded(Exception):
    """Ends the probe pass once the layer's input is known."""


class _Recorder(nn.Module):
    """Stands in for the layer during the probe pass: keeps its (single tensor) input and stops the pass."""

    def __init__(self):
        super().__init__()
        self.input: torch.Tensor | None = None

    def forward(self, *args: object, **kwargs: object) -> None:
        if len(args) == 1 and not kwargs and isinstance(args[0], torch.Tensor):
            self.input = args[0]
        raise _Recorded


def _zeros_like_channels(reference: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, channels, H, W) zeros shaped like `reference` (B, *, H, W) apart from its channel count."""
    return reference.new_zeros(reference.shape[0], channels, *reference.shape[2:])


def _cat_output(graph: fx.Graph) -> fx.Node | None:
    (output,) = [n for n in graph.nodes if n.op == "output"]
    cat = output.args[0]
    if not (isinstance(cat, fx.Node) and cat.op == "call_function" and cat.target is torch.cat):
        return None
    dim = cat.kwargs.get("dim", cat.args[1] if len(cat.args) > 1 else 0)
    parts = cat.args[0] if cat.args else cat.kwargs.get("tensors")
    if dim not in (1, -3) or not isinstance(parts, (list, tuple)) or not all(isinstance(p, fx.Node) for p in parts):
        return None
    return cat


def _channel_counts(traced: fx.GraphModule, cat: fx.Node, x: torch.Tensor) -> list[int] | None:
    """The channel count of each input of `cat` on the layer's probe input `x`."""
    counts: dict[fx.Node, int] = {}
    parts = list(cat.args[0])

    class Probe(fx.Interpreter):
        def run_node(self, n: fx.Node):
            value = super().run_node(n)
            if n in parts and isinstance(value, torch.Tensor) and value.ndim == 4:
                counts[n] = value.shape[1]
            return value

    with torch.no_grad():
        Probe(traced).run(x)
    return [counts[p] for p in parts] if len(counts) == len(set(parts)) else None


def pruned(model: nn.Module, layer: str, channels: Collection[int] | None, probe: torch.Tensor,
           ) -> dict[str, nn.Module]:
    """`{layer: GraphModule}` computing only the branches of `layer` that hold `channels` (zeros elsewhere), or
    `{}` when `channels` is None (the objective reads the whole layer), the layer is called more than once or
    is not a traceable channel concatenation, nothing can be dropped, or the check on `probe` (1, C, H, W) fails.
    `model` is frozen and in eval mode, with any other replacements already in place."""
    if channels is None or "#" in layer or not layer:
        return {}
    module = hooks.get_module(model, layer)
    try:
        traced = fx.GraphModule(module, _ChildrenAsLeaves(module).trace(module))
    except Exception:  # noqa: BLE001 - fx cannot trace every forward: then nothing is pruned
        return {}
    cat = _cat_output(traced.graph)
    if cat is None:
        return {}
    recorder = _Recorder()
    try:
        with torch.no_grad(), hooks.swap_modules(model, {layer: recorder}):
            model(probe)
    except _Recorded:
        pass
    except Exception:  # noqa: BLE001 - not prunable; the render reports real errors itself
        return {}
    x = recorder.input
    if x is None:
        return {}
    with torch.no_grad():
        before = module(x)
    try:
        counts = _channel_counts(traced, cat, x)
    except Exception:  # noqa: BLE001 - the traced graph does not run as the module does: leave it
        return {}
    if counts is None or sum(counts) != before.shape[1]:
        return {}
    wanted, start, parts = set(channels), 0, list(cat.args[0])
    needed = []
    for part, count in zip(parts, counts):
        needed.append(any(start <= c < start + count for c in wanted))
        start += count
    if all(needed) or not any(needed):
        return {}
    reference = parts[needed.index(True)]
    with traced.graph.inserting_before(cat):
        new_parts = [part if keep else traced.graph.call_function(_zeros_like_channels, (reference, count))
                     for part, keep, count in zip(parts, needed, counts)]
    cat.args = (new_parts, *cat.args[1:])
    traced.graph.eliminate_dead_code()
    traced.recompile()
    try:
        with torch.no_grad():
            after = traced(x)
    except Exception:  # noqa: BLE001
        return {}
    index = sorted(wanted)
    if after.shape != before.shape or not torch.allclose(after[:, index], before[:, index], rtol=1e-5, atol=1e-6):
        return {}
    return {layer: traced}

