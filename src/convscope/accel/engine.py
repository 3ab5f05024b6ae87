"""`accelerated(...)`: what the engine does to a frozen working copy for one feature visualization, after ONE probe
pass that folding, pruning and the caller's shape checks share (and that teaches `hooks.capture(stop=True)` where
the pass may stop)."""

from __future__ import annotations

import contextlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import hooks
from .fold import folded
from .kernels import image_convs
from .probe import Probe, probe
from .prune import pruned
from .switch import enabled

__all__ = ["Applied", "accelerated"]


@dataclass(frozen=True)
class Applied:
    """What `accelerated` did: the probe pass it made, how many BatchNorms it folded, which layers it pruned (some
    of their branches replaced by zeros), which image-facing convolutions take the phase-split input gradient."""

    probe: Probe
    fused: int
    pruned: tuple[str, ...]
    kernels: tuple[str, ...] = ()

    def shapes(self) -> dict[str, torch.Size]:
        """Output shape of each probed layer, and of the model output under "" when the probe reached it."""
        found = {name: a.shape for name, a in self.probe.activations.items()}
        if self.probe.output is not None:
            found[""] = self.probe.output.shape
        return found


def _prunable(layers: Sequence[str], channels: Mapping[str, Collection[int] | None]) -> list[str]:
    """Layers whose unread branches may go: a channel subset is read, and no other read layer lies inside them."""
    return [name for name in layers if channels.get(name) is not None and "#" not in name and name
            and not any(other != name and other.startswith(name + ".") for other in layers)]


@contextlib.contextmanager
def accelerated(net: nn.Module, x: torch.Tensor, layers: Sequence[str],
                channels: Mapping[str, Collection[int] | None], *, stop: bool, fuse: bool = True,
                input_gradient: bool = True) -> Iterator[Applied]:
    """Probe `net` (a frozen working copy) once on `x` (1, C, H, W), then, unless `fuse=False` or inside
    `accel.plain()`, fold its BatchNorms (not around `layers`), prune the branches of `layers` outside
    `channels[layer]` and, when the block needs gradients with respect to the input (`input_gradient`), give the
    image-facing strided convolutions their phase-split backward (`accel.kernels`). `stop`: the block's passes
    end after `layers`."""
    on = fuse and enabled() and not isinstance(net, torch.jit.ScriptModule)  # TorchScript: no module swaps
    candidates = _prunable(layers, channels) if on else []
    seen = probe(net, x, layers, stop=stop, inputs_of=candidates)
    with contextlib.ExitStack() as stack:
        fused = stack.enter_context(folded(net, x, layers, stop=stop, seen=seen)) if on else 0
        cut: dict[str, nn.Module] = {}
        done = []
        for name in candidates:
            branches = pruned(net, name, channels[name], seen.inputs.get(name))
            cut.update(branches)
            done += [name] if branches else []
        stack.enter_context(hooks.swap_modules(net, cut))
        kernels = image_convs(net) if on and input_gradient else {}
        stack.enter_context(hooks.swap_modules(net, kernels))
        yield Applied(seen, fused, tuple(done), tuple(sorted(kernels)))
