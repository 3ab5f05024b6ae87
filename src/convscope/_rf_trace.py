"""Analytic receptive fields: trace the model with torch.fx and propagate each node's field through the graph.

Per spatial axis a node's state is `Axis(lo, hi, jump, uniform, pos)`: unit i along the axis sees input pixels
`[lo + i * jump, hi + i * jump]`; with `uniform=True` every unit sees `[lo, hi]` (after a global pool, a flatten,
a squeeze-excitation gate, ...), and `jump=None` means the tensor has no spatial axes left. `pos` is the tensor
dimension (counted from the end) that holds the axis: -2, -1 for (B, C, H, W); permutes to channels-last
(ConvNeXt) move it, and linear layers / layer norms over the channel axis then act per position. The rules:

- conv and pooling windows (kernel k, stride s, padding p, dilation d): `lo -= p * jump`,
  `hi += (d * (k - 1) - p) * jump`, `jump *= s` (`ceil_mode` only adds units at the end, not a different start);
- adaptive pools: an exact window when the input size divides evenly, the whole input for a 1-unit output;
- reshapes that keep the trailing spatial axes, channel concatenation, elementwise ops and modules: identity;
- multi-input ops (add, mul, cat): union of the inputs' intervals, which needs equal jumps (broadcast 1-unit
  inputs count as uniform);
- flatten / linear / spatial reductions / instance and group norm: the whole input.

Anything else (upsampling, transposed convs, windows over a permuted layout, ...) is "unknown" with a reason,
and the caller measures those layers instead.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import fx, nn
from torch.nn.modules import conv as _conv
from torch.nn.modules import pooling as _pool

from ._fxtrace import OwnTracer

__all__ = ["Axis", "Unknown", "trace_fields"]


@dataclass(frozen=True)
class Axis:
    lo: int
    hi: int
    jump: int | None
    uniform: bool = False
    pos: int = -1


@dataclass(frozen=True)
class Unknown:
    reason: str


CONST = "const"  # a value that does not depend on the input pixels (weights, sizes, constants)
State = tuple[Axis, ...] | Unknown | str


class _Stop(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Threshold, nn.LogSigmoid, nn.Identity,
    nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd, nn.LocalResponseNorm,
)
_GLOBAL_MODULES = (nn.modules.instancenorm._InstanceNorm, nn.GroupNorm)
_POINTWISE_NAMES = {
    "add", "sub", "mul", "div", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "relu", "relu6",
    "sigmoid", "tanh", "exp", "log", "sqrt", "rsqrt", "clamp", "clip", "maximum", "minimum", "where", "erf", "sign",
    "square", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish", "hardsigmoid", "hardtanh",
    "softplus", "threshold", "logsigmoid", "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
    "batch_norm", "iadd", "isub", "imul", "itruediv", "and", "or", "masked_fill", "lerp", "addcmul",
}
_FIRST_ONLY = {"to", "type", "type_as", "float", "double", "half", "bfloat16", "contiguous", "clone", "detach",
               "cpu", "cuda", "requires_grad", "expand_as", "expand", "stochastic_depth"}
_SPLIT = {"chunk", "split", "tensor_split", "unbind", "split_with_sizes"}
_LAYOUT = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "unflatten"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp", "norm", "prod"}


def _name(target: Any) -> str:
    """`torch.relu_`, `"relu_"`, `operator.and_` -> "relu", "relu", "and" (in-place variants share the rule)."""
    text = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    return text.rstrip("_") or text


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


def window(state: tuple[Axis, ...], kernel, stride, padding, dilation) -> tuple[Axis, ...]:
    n = len(state)
    kernel, dilation = _tuple(kernel, n), _tuple(dilation, n)
    stride = kernel if stride is None or stride == () or stride == [] else _tuple(stride, n)
    if padding == "valid":
        padding = 0
    if padding == "same":
        padding = tuple((d * (k - 1)) // 2 for k, d in zip(kernel, dilation))
    padding = _tuple(padding, n)
    out = []
    for a, (ax, k, s, p, d) in enumerate(zip(state, kernel, stride, padding, dilation)):
        if ax.jump is None:
            raise _Stop("a window op over a tensor with no spatial axes")
        if ax.pos != a - n:
            raise _Stop("a window op over a tensor whose spatial axes are not last (permuted layout)")
        if ax.uniform:
            out.append(replace(ax, jump=ax.jump * s))
        else:
            out.append(replace(ax, lo=ax.lo - p * ax.jump, hi=ax.hi + (d * (k - 1) - p) * ax.jump, jump=ax.jump * s))
    return tuple(out)


def collapse(state: tuple[Axis, ...], sizes: tuple[int, ...], keep_spatial: bool) -> tuple[Axis, ...]:
    """Every output unit sees every input unit along every axis."""
    out = []
    for ax, n in zip(state, sizes):
        hi = ax.hi if ax.uniform or ax.jump is None else ax.hi + (n - 1) * ax.jump
        jump = ax.jump * n if keep_spatial and ax.jump is not None else None
        out.append(replace(ax, hi=hi, jump=jump, uniform=True))
    return tuple(out)


def adaptive(state: tuple[Axis, ...], sizes: tuple[int, ...], output_size) -> tuple[Axis, ...]:
    targets = _tuple(output_size, len(state))
    out = []
    for ax, n, m in zip(state, sizes, targets):
        m = n if m is None else m
        if m == n:
            out.append(ax)
        elif m == 1:
            out.append(collapse((ax,), (n,), keep_spatial=True)[0])
        elif n % m == 0:
            out.append(replace(window((replace(ax, pos=-1),), n // m, n // m, 0, 1)[0], pos=ax.pos))
        else:
            raise _Stop(f"an adaptive pool from {n} to {m} units (uneven bins)")
    return tuple(out)


def union(items: list[tuple[tuple[Axis, ...], tuple[int, ...]]], out_shape: tuple[int, ...]) -> tuple[Axis, ...]:
    """Union of the inputs' fields per axis; `items` are (state, input shape), `out_shape` the output's shape."""
    result = []
    for a in range(len(items[0][0])):
        pos = items[0][0][a].pos
        if any(state[a].pos != pos for state, _ in items):
            raise _Stop("inputs with different layouts are combined")
        n_out = out_shape[pos] if len(out_shape) >= -pos else 1
        axes, full = [], []
        for state, shape in items:
            ax = state[a]
            broadcast = len(shape) < -pos or shape[pos] == 1
            if broadcast and n_out > 1:
                ax = replace(ax, uniform=True)
            else:
                full.append(ax)
            axes.append(ax)
        local = [ax for ax in axes if not ax.uniform]
        jumps = {ax.jump for ax in local}
        if len(jumps) > 1:
            raise _Stop(f"inputs with different strides {sorted(jumps)} are combined")
        lo = min(ax.lo for ax in axes)
        if len(local) == len(axes):
            result.append(Axis(lo, max(ax.hi for ax in axes), local[0].jump, False, pos))
            continue
        his = [ax.hi for ax in axes if ax.uniform] + [ax.hi + (n_out - 1) * ax.jump for ax in local]
        # the output's unit spacing is that of the inputs that are not broadcast along this axis
        jump = next((ax.jump for ax in full + axes if ax.jump is not None), None)
        result.append(Axis(lo, max(his), jump, True, pos))
    return tuple(result)


class _CallTracer(OwnTracer):
    """Records, for every module call (leaf or container), the graph node that holds its output. Confined to its
    thread and model (`_fxtrace.OwnTracer`): other threads' models run normally while it traces."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, fx.Node | None]] = []

    def call_module(self, m: nn.Module, forward, args, kwargs):
        result = super().call_module(m, forward, args, kwargs)
        if not self.ours(m):
            return result
        try:
            path = self.path_of_module(m)
        except NameError:
            return result
        self.calls.append((path, result.node if isinstance(result, fx.Proxy) else None))
        return result


class _Propagator(fx.Interpreter):
    def __init__(self, graph_module: fx.GraphModule, model: nn.Module) -> None:
        super().__init__(graph_module, garbage_collect_values=True)
        self.model = model
        self.states: dict[fx.Node, State] = {}
        self.nsp = 0

    def run_node(self, n: fx.Node) -> Any:
        values = {a: self.env[a] for a in n.all_input_nodes}
        result = super().run_node(n)
        try:
            self.states[n] = self._rule(n, values, result)
        except _Stop as stop:
            self.states[n] = Unknown(f"{_describe(self.model, n)}: {stop.reason}")
        except Exception as error:  # a rule that does not fit this call: measure instead of guessing
            self.states[n] = Unknown(f"{_describe(self.model, n)}: {type(error).__name__}: {error}")
        return result

    def _rule(self, n: fx.Node, values: dict[fx.Node, Any], result: Any) -> State:
        if n.op == "placeholder":
            if isinstance(result, torch.Tensor) and result.ndim >= 3 and not self.nsp:
                self.nsp = result.ndim - 2
                return tuple(Axis(0, 0, 1, False, a - self.nsp) for a in range(self.nsp))
            return CONST
        if n.op in ("get_attr", "output"):
            return CONST
        inputs = [(a, self.states[a]) for a in n.all_input_nodes]
        for _, state in inputs:
            if isinstance(state, Unknown):
                return state
        live = [(a, s) for a, s in inputs if isinstance(s, tuple)]
        if not live or not _has_tensor(result):
            return CONST
        first, state = live[0]
        x = values[first]
        if n.op == "call_module":
            return self._module(self.model.get_submodule(n.target), state, x, result)
        name = _name(n.target)
        if name == "getitem":
            return self._getitem(state, x, n.args[1])
        if name in _POINTWISE_NAMES:
            return self._union(live, values, result)
        if name in _FIRST_ONLY:
            if isinstance(x, torch.Tensor) and isinstance(result, torch.Tensor) and result.shape != x.shape:
                return self._union([(first, state)], values, result)
            return state
        if name in _SPLIT:  # chunk(x, n, dim) / split(x, size, dim) / unbind(x, dim)
            where = 1 if name == "unbind" else 2
            dim = n.kwargs.get("dim", n.args[where] if len(n.args) > where else 0)
            if dim % x.ndim in _spatial_dims(state, x.ndim):
                raise _Stop(f"{name} along a spatial axis")
            return state
        if name == "cat":
            dim = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else 0)
            if dim % result.ndim in _spatial_dims(state, result.ndim):
                raise _Stop("concatenation along a spatial axis")
            return self._union(live, values, result)
        if name in _LAYOUT or name in ("permute", "transpose"):
            return self._layout(name, state, x, result, n)
        if name in _REDUCE:
            return self._reduce(state, x, n)
        if name in ("max_pool1d", "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d",
                    "max_pool2d_with_indices", "boolean_dispatch"):
            args = _bind(n, ("input", "kernel_size", "stride", "padding", "dilation"), {"stride": None, "padding": 0,
                                                                                         "dilation": 1})
            return window(state, args["kernel_size"], args["stride"], args["padding"], args["dilation"])
        if name.startswith("adaptive_") and "pool" in name:
            _trailing(state)
            return adaptive(state, _sizes(state, x), _bind(n, ("input", "output_size"), {})["output_size"])
        if name in ("conv1d", "conv2d", "conv3d"):
            args = _bind(n, ("input", "weight", "bias", "stride", "padding", "dilation"),
                         {"bias": None, "stride": 1, "padding": 0, "dilation": 1})
            kernel = tuple(values[n.args[1]].shape[2:]) if isinstance(n.args[1], fx.Node) else None
            return window(state, kernel, args["stride"], args["padding"], args["dilation"])
        if name in ("layer_norm", "linear"):
            shape = _bind(n, ("input", "normalized_shape"), {})["normalized_shape"] if name == "layer_norm" else (1,)
            return self._last_axes(state, x, len(_tuple(shape, 1)), name == "layer_norm")
        if name in ("group_norm", "instance_norm"):
            return collapse(state, _sizes(state, x), keep_spatial=True)
        if name in ("softmax", "log_softmax"):
            return self._softmax(state, x, n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None))
        raise _Stop(f"no receptive-field rule for {name!r}")

    def _module(self, m: nn.Module, state, x, result) -> State:
        sizes = _sizes(state, x)
        if isinstance(m, _conv._ConvTransposeNd):
            raise _Stop("transposed convolution")
        if isinstance(m, _conv._ConvNd):
            return window(state, m.kernel_size, m.stride, m.padding, m.dilation)
        if isinstance(m, _pool._MaxPoolNd):
            return window(state, m.kernel_size, m.stride, m.padding, m.dilation)
        if isinstance(m, _pool._AvgPoolNd):
            return window(state, m.kernel_size, m.stride, m.padding, 1)
        if isinstance(m, _pool._LPPoolNd):
            return window(state, m.kernel_size, m.stride, 0, 1)
        if isinstance(m, (_pool._AdaptiveAvgPoolNd, _pool._AdaptiveMaxPoolNd)):
            _trailing(state)
            return adaptive(state, sizes, m.output_size)
        if isinstance(m, _POINTWISE_MODULES):
            return state
        if isinstance(m, _GLOBAL_MODULES):
            return collapse(state, sizes, keep_spatial=True)
        if isinstance(m, nn.Flatten):
            return self._layout("flatten", state, x, result, None)
        if isinstance(m, nn.Linear):
            return self._last_axes(state, x, 1, False)
        if isinstance(m, nn.LayerNorm):
            return self._last_axes(state, x, len(m.normalized_shape), True)
        if isinstance(m, (nn.Softmax, nn.LogSoftmax, nn.Softmin)):
            return self._softmax(state, x, m.dim)
        raise _Stop(f"no receptive-field rule for {type(m).__name__}")

    def _last_axes(self, state, x, count: int, normalizes: bool) -> State:
        """Linear layers and layer norms act on the last `count` dims: per position when those hold no spatial
        axis (channels-last), over the whole input for a norm that includes them."""
        if all(ax.jump is None for ax in state) or all(ax.pos < -count for ax in state):
            return state
        if normalizes:
            return collapse(state, _sizes(state, x), keep_spatial=True)
        raise _Stop("a linear layer applied along a spatial axis")

    def _union(self, live, values, result) -> State:
        items = [(s, tuple(values[a].shape) if isinstance(values[a], torch.Tensor) else ()) for a, s in live]
        out_shape = tuple(result.shape) if isinstance(result, torch.Tensor) else items[0][1]
        return union(items, out_shape)

    def _getitem(self, state, x, index) -> State:
        if not isinstance(x, torch.Tensor):
            return state  # an element of a tuple/list output: same field as the whole
        index = index if isinstance(index, tuple) else (index,)
        if any(i is None for i in index):
            raise _Stop("indexing with None (new axis)")
        if Ellipsis in index:
            cut = index.index(Ellipsis)
            before, after = index[:cut], index[cut + 1:]
        else:
            before, after = index, ()
        touched = list(enumerate(before)) + [(x.ndim - len(after) + i, v) for i, v in enumerate(after)]
        spatial = _spatial_dims(state, x.ndim)
        for dim, item in touched:
            if dim in spatial and not (isinstance(item, slice) and item == slice(None)):
                raise _Stop("indexing along a spatial axis")
        return state

    def _layout(self, name: str, state, x, result, n: fx.Node | None) -> State:
        if all(ax.jump is None for ax in state):
            return state
        if name in ("permute", "transpose"):
            args = [a % x.ndim for a in _flat_ints(n.args[1:] if n is not None else ())]
            order = list(range(x.ndim))
            if name == "transpose":
                order[args[0]], order[args[1]] = order[args[1]], order[args[0]]
            else:
                order = args
            return tuple(replace(ax, pos=order.index(x.ndim + ax.pos) - x.ndim) for ax in state)
        tail = -min(ax.pos for ax in state)
        if isinstance(result, torch.Tensor) and result.ndim >= tail and \
                tuple(result.shape[-tail:]) == tuple(x.shape[-tail:]):
            return state  # the spatial axes and what follows them are untouched (e.g. a channel shuffle)
        return collapse(state, _sizes(state, x), keep_spatial=False)

    def _reduce(self, state, x, n: fx.Node) -> State:
        dims = n.kwargs.get("dim", n.args[1] if len(n.args) > 1 else None)
        keepdim = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        if dims is None:
            return collapse(state, _sizes(state, x), keep_spatial=False)
        if not {d % x.ndim for d in _tuple(dims, 1)} & _spatial_dims(state, x.ndim):
            return state
        return collapse(state, _sizes(state, x), keep_spatial=bool(keepdim))

    def _softmax(self, state, x, dim) -> State:
        if dim is None or dim % x.ndim in _spatial_dims(state, x.ndim):
            return collapse(state, _sizes(state, x), keep_spatial=True)
        return state


def _spatial_dims(state: tuple[Axis, ...], ndim: int) -> set[int]:
    return {ndim + ax.pos for ax in state if ax.jump is not None}


def _sizes(state: tuple[Axis, ...], x: Any) -> tuple[int, ...]:
    if not isinstance(x, torch.Tensor):
        return ()
    return tuple(x.shape[ax.pos] if x.ndim >= -ax.pos else 1 for ax in state)


def _trailing(state: tuple[Axis, ...]) -> None:
    if any(ax.pos != a - len(state) for a, ax in enumerate(state) if ax.jump is not None):
        raise _Stop("a pool over a tensor whose spatial axes are not last (permuted layout)")


def _flat_ints(args: Any) -> list[int]:
    out: list[int] = []
    for a in args:
        out.extend(_flat_ints(a) if isinstance(a, (tuple, list)) else [a])
    return out


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)):
        return any(_has_tensor(v) for v in value)
    return False


def _bind(n: fx.Node, names: tuple[str, ...], defaults: dict[str, Any]) -> dict[str, Any]:
    bound = dict(defaults)
    bound.update(zip(names, n.args))
    bound.update({k: v for k, v in n.kwargs.items() if k in names})
    missing = [k for k in names if k not in bound]
    if missing:
        raise _Stop(f"cannot read arguments {missing}")
    return bound


def _describe(model: nn.Module, n: fx.Node) -> str:
    if n.op == "call_module":
        return f"{n.target} ({type(model.get_submodule(n.target)).__name__})"
    return f"{_name(n.target)}()"


def trace_fields(model: nn.Module, example: torch.Tensor) -> list[tuple[str, State]]:
    """Trace `model` and run `example` (1, C, *spatial) through the graph; returns (module path, state) per module
    call in the order calls finish (as forward hooks see them). Raises whatever torch.fx raises if it cannot trace."""
    tracer = _CallTracer(model)
    graph = tracer.trace(model)
    graph_module = fx.GraphModule(tracer.root, graph)
    propagator = _Propagator(graph_module, model)
    propagator.run(example)
    out = []
    for path, node in tracer.calls:
        if node is None:
            out.append((path, Unknown(f"{path} returns a non-tensor value")))
        else:
            out.append((path, propagator.states.get(node, Unknown(f"{path}: not reached"))))
    return out


def to_size(axis: Axis) -> int:
    return axis.hi - axis.lo + 1

