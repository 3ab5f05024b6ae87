"""Skip the branches of the objective's layer that the objective does not read.

An Inception block (and any layer whose output is a channel concatenation of separate branches) spends most of its
work on branches a channel objective never looks at: `channel("inception4a", 5)` reads branch 1 only, yet the
forward pass runs all four and the backward pass sends zeros through three of them. `pruned(...)` runs the layer
once on its input recorded in the probe pass (`accel.probe`) and watches it: hooks on its child modules see each
child's output, and a `TorchFunctionMode` sees the `torch.cat(..., dim=1)` that makes the layer's output. When every
part of that concatenation is the output of one child module called once, the children whose channels the objective
does not read are replaced (on the frozen working copy, never on the user's model) by `ZeroBranch`es that return
zeros of the same shape without computing anything. The layer keeps its output shape; the channels the objective
reads are unchanged (checked numerically on that input before use). Anything else is left as it is.

No `torch.fx` tracing: fx patches `nn.Module.__call__` for the whole process while it traces, which would reach
into another thread running any model at the time. Hooks on the copy and function modes are local.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .. import hooks
from .switch import enabled

__all__ = ["pruned", "ZeroBranch"]


class ZeroBranch(nn.Module):
    """Stands in for a branch whose channels are not read: (B, C_in, H, W) -> zeros (B, channels, H, W)."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.channels, *x.shape[2:])

    def extra_repr(self) -> str:
        return f"channels={self.channels}"


class _Concatenations(TorchFunctionMode):
    """Records every `torch.cat` call: (its inputs, its dim, its result)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[list[torch.Tensor], int, torch.Tensor]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.cat:
            parts = args[0] if args else kwargs.get("tensors", ())
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            if isinstance(out, torch.Tensor) and isinstance(parts, (list, tuple)):
                self.calls.append((list(parts), int(dim), out))
        return out


def _branches(module: nn.Module, x: torch.Tensor) -> tuple[list[str], list[int], torch.Tensor] | None:
    """(child name per part, channels per part, output) when `module(x)` returns a channel concatenation of its
    children's outputs, each child called once with one tensor of the input's spatial size; else None."""
    outputs: dict[str, list[torch.Tensor]] = {}
    spatial_ok: dict[str, bool] = {}
    handles = []

    def make_hook(name: str):
        def hook(_m, args, out):
            outputs.setdefault(name, []).append(out)
            ok = (len(args) == 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
                  and out.ndim == 4 and args[0].ndim == 4 and out.shape[2:] == args[0].shape[2:])
            spatial_ok[name] = spatial_ok.get(name, True) and ok

        return hook

    mode = _Concatenations()
    try:
        for name, child in module.named_children():
            handles.append(child.register_forward_hook(make_hook(name)))
        with torch.no_grad(), hooks.function_mode(mode):
            out = module(x)
    finally:
        for handle in handles:
            handle.remove()
    final = [c for c in mode.calls if c[2] is out]
    if not isinstance(out, torch.Tensor) or out.ndim != 4 or len(final) != 1 or final[0][1] not in (1, -3):
        return None
    owner = {id(t[0]): name for name, t in outputs.items() if len(t) == 1}
    names = [owner.get(id(part)) for part in final[0][0]]
    if None in names or len(set(names)) != len(names) or not all(spatial_ok[n] for n in names):
        return None
    return names, [int(part.shape[1]) for part in final[0][0]], out  # type: ignore[return-value]


def pruned(net: nn.Module, layer: str, channels: Collection[int] | None, x: torch.Tensor | None,
           ) -> dict[str, nn.Module]:
    """`{"layer.child": ZeroBranch}` for the children of `layer` that hold none of `channels`, or `{}` when
    `channels` is None (the objective reads the whole layer), the layer is called more than once or is not a
    channel concatenation of its children, nothing can be dropped, or the check on `x` fails. `net` is a frozen
    working copy with any other replacements already in place; `x` is the layer's input recorded in the probe pass
    (`accel.probe(..., inputs_of=[layer])`; None: not recorded, nothing is pruned)."""
    if channels is None or "#" in layer or not layer or x is None or not enabled():
        return {}
    module = hooks.get_module(net, layer)
    if not any(True for _ in module.children()):
        return {}
    try:
        found = _branches(module, x)
    except Exception:  # noqa: BLE001 - a layer we cannot watch is left as it is
        return {}
    if found is None:
        return {}
    names, counts, before = found
    wanted, start, unread = set(channels), 0, {}
    for name, count in zip(names, counts):
        if not any(start <= c < start + count for c in wanted):
            unread[f"{layer}.{name}"] = ZeroBranch(count)
        start += count
    if not unread or len(unread) == len(names):
        return {}
    index = sorted(wanted)
    try:
        with torch.no_grad(), hooks.swap_modules(net, unread):
            after = module(x)
    except Exception:  # noqa: BLE001
        return {}
    if after.shape != before.shape or not torch.allclose(after[:, index], before[:, index], rtol=1e-5, atol=1e-6):
        return {}
    return unread
