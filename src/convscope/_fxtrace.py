"""`trace(model)`: `torch.fx.symbolic_trace`, confined to the model it traces and to the thread that traces it.

While a trace runs, fx patches `nn.Module.__call__` and `nn.Module.__getattr__` for the whole process. Another
thread running any model at that moment (the user's own model, a web request on the same weights) would enter
this tracer and fail ("module is not installed as a submodule"), or worse, be recorded into the graph. Here a
module call or attribute read from another thread, or of a module outside the traced model, runs exactly as if no
tracer were there. (fx may still wrap a few `math` functions in the globals of modules the other thread calls;
those wrappers pass plain values straight through, and fx removes them when the trace ends.)
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch.fx as fx
from torch import nn

__all__ = ["trace", "OwnTracer"]


class OwnTracer(fx.Tracer):
    """An `fx.Tracer` that records only its own thread's calls of `root`'s modules (others run untraced)."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self._thread = threading.get_ident()
        self._own = {id(m) for m in root.modules()}

    def ours(self, module: nn.Module | None = None) -> bool:
        return threading.get_ident() == self._thread and (module is None or id(module) in self._own)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        if not self.ours(m):
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def getattr(self, attr: str, attr_val: Any, parameter_proxy_cache: dict[str, Any]) -> Any:
        if not self.ours():
            return attr_val
        return super().getattr(attr, attr_val, parameter_proxy_cache)


def trace(model: nn.Module) -> fx.GraphModule:
    """The `fx.GraphModule` of `model`, as `torch.fx.symbolic_trace(model)` makes it."""
    tracer = OwnTracer(model)
    graph = tracer.trace(model)
    return fx.GraphModule(tracer.root, graph, type(model).__name__)
