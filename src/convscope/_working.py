"""Private working copies of a user's model, so that no call ever changes the model itself, not even while it runs.

`working_copy(model)` (used by `hooks.frozen`) checks out a structural copy of the module tree:

- new `Module` objects of the same classes, with their own `_modules`, `_parameters`, `_buffers` and hook
  dictionaries, and every other attribute shared (a snapshot of `__dict__`);
- parameters shared as detached `nn.Parameter`s that do not require grad (same storage and version counter: no memory
  is copied, and in-place updates of the user's weights, such as an optimizer step, are seen at once); buffers
  shared detached;
- a module or parameter used at several places of the tree (tied weights, a block called twice) maps to ONE copy;
- eval mode everywhere (so BatchNorm statistics, shared with the user's buffers, are only read);
- the user's own hooks, copied into the copy's dictionaries when it is checked out, so they still run, and the
  hooks convscope adds never land in the user's dictionaries.

Swapped submodules (BatchNorm folding, pruned branches), captures and rectifier rules then act on the copy. Another
thread running, inspecting or hooking the same model never sees any of it.

Copies are pooled per model (weakly): a call checks a copy out and returns it on exit, so two concurrent calls on one
model get two copies, and the module objects of a copy stay the same from call to call, which keeps the caches keyed
on them (folded BatchNorms, call counts, default layers) warm. Every checkout refreshes the copy from the model as it
is now (attributes, parameters, buffers, hooks, flags; a module the user replaced gets a new copy).

TorchScript: a `ScriptModule` (or a model containing one) cannot be copied this way; `frozen` falls back to changing
its flags in place and restoring them on exit (documented in `hooks.frozen`).
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["working_copy", "copyable"]

_SPECIAL = ("_modules", "_parameters", "_buffers")
_POOL_SIZE = 4  # idle copies kept per model (concurrent calls beyond this build, then drop, their own)


class _Copy:
    """One working copy: a map from the user's module objects to ours, kept across checkouts."""

    def __init__(self) -> None:
        self.modules: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()
        self.in_use = False

    def refresh(self, model: nn.Module) -> nn.Module:
        """The copy of `model` as it is now."""
        made: dict[int, nn.Module] = {}
        params: dict[int, nn.Parameter] = {}

        def param(p: torch.Tensor | None) -> torch.Tensor | None:
            if p is None:
                return None
            if id(p) not in params:
                params[id(p)] = nn.Parameter(p.detach(), requires_grad=False)
            return params[id(p)]

        def visit(module: nn.Module) -> nn.Module:
            if id(module) in made:
                return made[id(module)]
            mine = self.modules.get(module)
            if mine is None or type(mine) is not type(module):
                mine = object.__new__(type(module))
                self.modules[module] = mine
            made[id(module)] = mine
            state = dict(vars(module))
            for key, value in state.items():  # hook dictionaries and bookkeeping sets: ours, not theirs
                if key.startswith("_") and key not in _SPECIAL and isinstance(value, (dict, set)):
                    state[key] = value.copy()
            state["_modules"] = {k: None if m is None else visit(m) for k, m in module._modules.items()}
            state["_parameters"] = {k: param(p) for k, p in module._parameters.items()}
            state["_buffers"] = {k: None if b is None else b.detach() for k, b in module._buffers.items()}
            state["training"] = False
            mine.__dict__.clear()
            mine.__dict__.update(state)
            return mine

        return visit(model)


class _Pool:
    def __init__(self) -> None:
        self.copies: list[_Copy] = []


_POOLS: "weakref.WeakKeyDictionary[nn.Module, _Pool]" = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def copyable(model: nn.Module) -> bool:
    """Whether `model` can have a working copy: no TorchScript module anywhere in it."""
    script = getattr(torch.jit, "ScriptModule", ())
    return not any(isinstance(m, script) for m in model.modules())


@contextlib.contextmanager
def working_copy(model: nn.Module) -> Iterator[nn.Module]:
    """Check out a working copy of `model` (see the module docstring) for the block, and return it to the pool."""
    with _LOCK:
        pool = _POOLS.get(model)
        if pool is None:
            pool = _POOLS[model] = _Pool()
        copy = next((c for c in pool.copies if not c.in_use), None)
        if copy is None:
            copy = _Copy()
            if len(pool.copies) < _POOL_SIZE:
                pool.copies.append(copy)
        copy.in_use = True
    try:
        yield copy.refresh(model)
    finally:
        with _LOCK:
            copy.in_use = False
