"""One probe pass that every part of the engine shares: module calls (folding), layer outputs (checks, shapes),
layer inputs (pruning) and, through `hooks.capture(stop=True)`, how often each module runs (early stopping)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .. import hooks

__all__ = ["Probe", "probe"]


@dataclass(frozen=True)
class Probe:
    """What one forward pass of the working copy on `x` (B, C, H, W) saw.

    Attributes:
        x: the input.
        layers: the layers asked for; `activations[name]` their outputs, detached.
        output: the model's output, or None when the pass may stop after `layers`.
        calls: every module call as (path, output shape or None), in the order calls finished.
        inputs: the input of the first call of each module asked for in `inputs_of`, detached.
        stop: whether the pass was allowed to stop after `layers`.
    """

    x: torch.Tensor
    layers: tuple[str, ...]
    activations: dict[str, torch.Tensor]
    output: torch.Tensor | None
    calls: list[tuple[str, torch.Size | None]]
    inputs: dict[str, torch.Tensor]
    stop: bool

    def outputs(self) -> list[torch.Tensor]:
        """The layers' outputs, then the model's output when there is one."""
        return [self.activations[n] for n in self.layers] + ([self.output] if self.output is not None else [])

    def macs(self, net: nn.Module) -> int:
        """Multiply-accumulates per input item of the convolutions and linear layers that run up to the probed
        layers (the whole pass when it does not stop there): how much arithmetic bf16 could speed up."""
        calls = self.calls
        if self.stop and self.layers:
            bases = {hooks.split_call(name)[0] for name in self.layers}
            last = max((i for i, (path, _) in enumerate(calls) if path in bases), default=len(calls) - 1)
            calls = calls[: last + 1]
        modules = dict(net.named_modules())
        total = 0
        for path, shape in calls:
            module = modules.get(path)
            if shape is None or len(shape) < 2:
                continue
            per_output = 0
            if isinstance(module, nn.modules.conv._ConvNd):
                per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            elif isinstance(module, nn.Linear):
                per_output = module.in_features
            total += per_output * math.prod(shape[1:])
        return total


def run_layers(net: nn.Module, x: torch.Tensor, layers: Sequence[str], *, stop: bool) -> list[torch.Tensor]:
    """`Probe.outputs()` for another run of `net` on `x` (no gradient), e.g. with replacements in place."""
    with torch.no_grad(), hooks.capture(net, list(layers), stop=stop and bool(layers)) as cap:
        out = cap.run(x)
        got = [cap[n] for n in layers]
    return got + ([out] if isinstance(out, torch.Tensor) else [])


def probe(net: nn.Module, x: torch.Tensor, layers: Sequence[str] = (), *, stop: bool = False,
          inputs_of: Sequence[str] = ()) -> Probe:
    """Run `net` (a frozen working copy) once on `x` without gradient and record what the engine needs.

    With `stop=True` the pass ends after `layers` (their `#k` calls included), as the render loop's passes will.
    A TorchScript model allows no hooks: its probe records the output only (no calls, so nothing is folded).
    """
    layers = tuple(layers)
    script = isinstance(net, torch.jit.ScriptModule)  # no hooks there: the output (and shapes) only
    with torch.no_grad(), contextlib.nullcontext([]) if script else hooks.record_calls(net) as calls, \
            hooks.record_inputs(net, () if script else inputs_of) as inputs, \
            hooks.capture(net, list(layers), stop=stop and bool(layers)) as cap:
        out = cap.run(x)
        activations = dict(cap.activations) if layers else {}
    # a stopping probe may still run to the end (the first pass per input shape does); later passes will not
    output = out if isinstance(out, torch.Tensor) and not (stop and layers) else None
    return Probe(x, layers, activations, output, list(calls), dict(inputs), stop)
