"""The incremental-inference engine's view of a model: a straight-line program of steps, one per FX node.

`build_program(model)` traces the model with `torch.fx.symbolic_trace` (`convscope._fxtrace`: kept out of other threads) and
sorts every node into what an occluder does to it (Krypton, Nakandala et al. 2019):

- `pointwise`: the output at a position depends only on the input at that position (BatchNorm in eval, ReLU and its
  relatives, dropout in eval, arithmetic with a constant that has no spatial extent): a changed patch stays a patch.
- `merge`: input-dependent maps combined position by position (a residual `add`, a channel `cat`): the patch is
  the union of theirs.
- `window`: a 2-D convolution or pooling with kernel, stride, padding, dilation: the patch grows by the kernel and
  shrinks by the stride; it is computed from a slice of the input with its halo, with the padding done by hand.
- `full`: anything else (adaptive pooling, flatten, linear, ...): computed on whole maps, batched.
- `const`: does not depend on the input; `shape`: a `size()`/`.shape` query.

Convolutions followed only by an eval-mode BatchNorm are folded with it (exact up to float rounding), and every op
that would write in place runs out of place, so cached clean activations are never overwritten. The user's model is
not changed: folded weights are copies, and steps call functions, not the modules' in-place variants.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._fxtrace import trace

__all__ = ["Step", "Window", "Program", "UnsupportedModel", "build_program", "fold_batchnorm", "run_clean",
           "settle_kinds", "standard_layout"]


@dataclass(frozen=True)
class Window:
    """Geometry of a 2-D sliding-window op, per spatial dim (rows, cols); `fill` is what its padding holds."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    fill: float


@dataclass
class Step:
    """One node of the traced model. `fn(*args, **kwargs)` computes it on whole (batched) tensors; `patch_fn`
    (window steps) computes it on an input slice that already holds its padding."""

    name: str
    kind: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    deps: tuple[str, ...] = ()
    window: Window | None = None
    patch_fn: Callable[[torch.Tensor], torch.Tensor] | None = None
    stack: tuple[str, ...] = ()
    module: str | None = None


@dataclass
class Program:
    steps: list[Step]
    output: str
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {s.name: i for i, s in enumerate(self.steps)}

    def step(self, name: str) -> Step:
        return self.steps[self.index[name]]

    def ancestors(self, name: str) -> set[str]:
        """Every step `name` depends on (itself included)."""
        seen, todo = set(), [name]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo.extend(_nodes_in(self.step(current).args, self.step(current).kwargs))
        return seen


def _nodes_in(args: Any, kwargs: Any) -> list[str]:
    found: list[str] = []
    fx.node.map_arg((args, kwargs), lambda n: found.append(n.name))
    return found


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _pointwise_module(module: nn.Module) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """An out-of-place function equal to the module's forward, for the modules known to act position by position."""
    if isinstance(module, (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)) and not module.training:
        return _identity
    if isinstance(module, nn.ReLU):
        return torch.relu
    if isinstance(module, nn.Hardtanh):  # ReLU6 included
        lo, hi = module.min_val, module.max_val
        return lambda x: F.hardtanh(x, lo, hi)
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        return lambda x: F.leaky_relu(x, slope)
    if isinstance(module, nn.ELU):
        alpha = module.alpha
        return lambda x: F.elu(x, alpha)
    if isinstance(module, nn.GELU):
        approximate = module.approximate
        return lambda x: F.gelu(x, approximate=approximate)
    simple = {nn.SiLU: F.silu, nn.Hardswish: F.hardswish, nn.Hardsigmoid: F.hardsigmoid, nn.Sigmoid: torch.sigmoid,
              nn.Tanh: torch.tanh, nn.Mish: F.mish}
    for kind, fn in simple.items():
        if type(module) is kind:
            return fn
    if isinstance(module, nn.BatchNorm2d) and not module.training and module.running_mean is not None:
        mean, var, weight, bias, eps = module.running_mean, module.running_var, module.weight, module.bias, module.eps
        return lambda x: F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
    return None


def _conv_fns(weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation, groups):
    weight = weight.detach().contiguous(memory_format=torch.channels_last)
    bias = None if bias is None else bias.detach()

    def full(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    def patch(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, bias, stride, 0, dilation, groups)

    return full, patch


def _window_module(module: nn.Module):
    """(Window, full fn, patch fn) for the 2-D convolutions and poolings whose patch rule is exact, else None."""
    if type(module) is nn.Conv2d and module.padding_mode == "zeros" and not isinstance(module.padding, str):
        full, patch = _conv_fns(module.weight, module.bias, module.stride, module.padding, module.dilation,
                                module.groups)
        geometry = Window(_pair(module.kernel_size), _pair(module.stride), _pair(module.padding),
                          _pair(module.dilation), 0.0)
        return geometry, full, patch
    if type(module) is nn.MaxPool2d and not module.ceil_mode and not module.return_indices:
        k, s, p, d = module.kernel_size, module.stride or module.kernel_size, module.padding, module.dilation
        geometry = Window(_pair(k), _pair(s), _pair(p), _pair(d), float("-inf"))
        return geometry, (lambda x: F.max_pool2d(x, k, s, p, d)), (lambda x: F.max_pool2d(x, k, s, 0, d))
    if (type(module) is nn.AvgPool2d and not module.ceil_mode and module.count_include_pad
            and module.divisor_override is None):
        k, s, p = module.kernel_size, module.stride or module.kernel_size, module.padding
        geometry = Window(_pair(k), _pair(s), _pair(p), (1, 1), 0.0)
        return geometry, (lambda x: F.avg_pool2d(x, k, s, p)), (lambda x: F.avg_pool2d(x, k, s, 0))
    return None


_ARITHMETIC = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div}
_POINTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.hardtanh, F.hardswish, F.hardsigmoid, F.silu, F.gelu,
                        F.leaky_relu, F.elu, torch.sigmoid, torch.tanh, F.mish, F.dropout}
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh"}


class UnsupportedModel(Exception):
    """The model cannot run on the engine (untraceable, several inputs, in-place tensor methods, ...)."""


def _method_fn(name: str) -> Callable[..., Any]:
    return lambda self, *args, **kwargs: getattr(self, name)(*args, **kwargs)


def _step_for(node: fx.Node, root: nn.Module) -> Step:
    stack = tuple(node.meta.get("nn_module_stack", {}).keys())
    base = dict(name=node.name, args=node.args, kwargs=dict(node.kwargs), stack=stack)
    if node.op == "get_attr":
        value = root
        for part in str(node.target).split("."):
            value = getattr(value, part)
        return Step(kind="const", fn=lambda value=value: value, **{**base, "args": (), "kwargs": {}})
    if node.op == "call_module":
        module = root.get_submodule(str(node.target))
        if getattr(module, "inplace", False) and node.args:
            _check_sole_user(node.args[0])
        window = _window_module(module)
        if window is not None:
            geometry, full, patch = window
            return Step(kind="window", fn=full, window=geometry, patch_fn=patch, module=str(node.target), **base)
        pointwise = _pointwise_module(module)
        if pointwise is not None:
            return Step(kind="pointwise", fn=pointwise, module=str(node.target), **base)
        return Step(kind="full", fn=_out_of_place_module(module), module=str(node.target), **base)
    if node.op == "call_function":
        target = node.target
        if target is getattr and len(node.args) == 2 and node.args[1] == "shape":
            return Step(kind="shape", fn=getattr, **base)
        if isinstance(target, Callable) and getattr(target, "__name__", "").endswith("_") \
                and not target.__name__.endswith("__"):
            raise UnsupportedModel(f"in-place function {target.__name__}")
        if target in _IN_PLACE_OPERATORS:
            raise UnsupportedModel(f"in-place operator {target.__name__}")
        args, kwargs = _out_of_place_call(target, node.args, dict(node.kwargs))
        if target is F.dropout and (args[2] if len(args) > 2 else kwargs.get("training", True)):
            return Step(kind="full", fn=target, **{**base, "args": args, "kwargs": kwargs})
        kind = ("arith" if target in _ARITHMETIC else "pointwise" if target in _POINTWISE_FUNCTIONS
                else "cat" if target in (torch.cat, torch.concat) else "full")
        return Step(kind=kind, fn=target, **{**base, "args": args, "kwargs": kwargs})  # type: ignore[arg-type]
    if node.op == "call_method":
        name = str(node.target)
        if name.endswith("_") and not name.endswith("__"):
            raise UnsupportedModel(f"in-place method {name}")
        kind = "shape" if name in ("size", "dim") else "pointwise" if name in _POINTWISE_METHODS else "full"
        return Step(kind=kind, fn=_method_fn(name), **base)
    raise UnsupportedModel(f"node {node.op}")  # pragma: no cover - placeholders/outputs are handled by the caller


_IN_PLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ipow,
                       operator.iand, operator.ior}


def _out_of_place_call(target: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The call with `inplace=False` however it was passed (`F.relu(x, True)` too), all arguments by keyword after
    the first; calls without an `inplace` parameter are returned unchanged."""
    try:
        bound = inspect.signature(target).bind(*args, **kwargs)
    except (TypeError, ValueError):  # builtins without a signature, or a call we cannot bind: leave it
        return tuple(args), kwargs
    if "inplace" not in bound.signature.parameters:
        return tuple(args), kwargs
    if bound.arguments.get("inplace"):
        _check_sole_user(args[0])
    bound.arguments["inplace"] = False
    return tuple(bound.args), dict(bound.kwargs)


def _check_sole_user(value: Any) -> None:
    """Running an in-place op out of place is the same only if nothing else reads the tensor it would overwrite."""
    if isinstance(value, fx.Node) and len(value.users) > 1:
        raise UnsupportedModel(f"an in-place op overwrites {value.name}, which other ops read")


def _out_of_place_module(module: nn.Module) -> Callable[..., Any]:
    if getattr(module, "inplace", False):  # an unknown module writing into its input would spoil shared tensors
        return lambda *args, **kwargs: module(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args),
                                              **kwargs)
    return module


def build_program(model: nn.Module) -> Program:
    """Trace `model` (in eval mode) into a `Program`; raises `UnsupportedModel` when the engine cannot run it."""
    try:
        traced = trace(model)  # fx.symbolic_trace, without reaching into other threads' models
    except Exception as error:  # any tracing failure (data-dependent control flow, ...) means: use the plain path
        raise UnsupportedModel(f"torch.fx cannot trace the model: {error}") from error
    steps: list[Step] = []
    output = None
    placeholders = [n for n in traced.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UnsupportedModel(f"{len(placeholders)} inputs")
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            steps.append(Step(name=node.name, kind="input", fn=_identity, args=(), kwargs={}))
        elif node.op == "output":
            if not isinstance(node.args[0], fx.Node):
                raise UnsupportedModel("the model returns several values")
            output = node.args[0].name
        else:
            steps.append(_step_for(node, model))
    assert output is not None
    return Program(steps, output)


def run_clean(program: Program, x: torch.Tensor) -> dict[str, Any]:
    """Run the program on one clean input (1, C, H, W); returns every node's value (the clean cache)."""
    env: dict[str, Any] = {}
    for step in program.steps:
        if step.kind == "input":
            env[step.name] = x
            continue
        plain = standard_layout if step.kind == "full" else (lambda v: v)
        args = fx.node.map_arg(step.args, lambda n: plain(env[n.name]))
        kwargs = fx.node.map_arg(step.kwargs, lambda n: plain(env[n.name]))
        env[step.name] = step.fn(*args, **kwargs)
    return env


def standard_layout(value: Any) -> Any:
    """Channels-last maps back to the standard layout before an op the engine does not know (`x.view(...)` needs
    it); the engine's own steps run channels-last."""
    if isinstance(value, torch.Tensor) and value.ndim == 4 and not value.is_contiguous():
        return value.contiguous()
    return value


def _spatial(value: Any) -> tuple[int, int] | None:
    return tuple(value.shape[-2:]) if isinstance(value, torch.Tensor) and value.ndim == 4 else None


def _flat_extent_free(value: Any) -> bool:
    """A constant operand that is the same at every position (scalar, or shape (..., 1, 1) without a batch dim > 1)."""
    if not isinstance(value, torch.Tensor):
        return isinstance(value, (int, float, bool))
    return value.ndim <= 1 and value.numel() == 1 or (value.ndim == 4 and value.shape[0] == 1
                                                      and value.shape[-2:] == (1, 1))


def settle_kinds(program: Program, env: dict[str, Any]) -> None:
    """After a clean run: settle each `arith` step into `pointwise`, `merge` or `full` (a `cat` into `merge` or
    `full`), mark steps that do not
    depend on the input `const`, and demote to `full` any step whose tensors do not have the shapes its kind
    assumes (4-D, same spatial size, constants without spatial extent)."""
    dependent = {s.name for s in program.steps if s.kind == "input"}
    for i, step in enumerate(program.steps):
        if step.kind == "input":
            continue
        names = _nodes_in(step.args, step.kwargs)
        deps = tuple(dict.fromkeys(n for n in names if n in dependent))
        kind = step.kind
        if not deps:
            kind = "const"
        elif kind == "cat":
            dim = step.kwargs.get("dim", step.args[1] if len(step.args) > 1 else 0)
            parts = step.args[0] if step.args and isinstance(step.args[0], (list, tuple)) else []
            out = _spatial(env[step.name])
            kind = "merge" if (dim in (1, -3) and out is not None and parts and all(
                isinstance(a, fx.Node) and a.name in dependent and _spatial(env[a.name]) == out for a in parts)) \
                else "full"
        elif kind in ("pointwise", "arith", "window"):
            out = _spatial(env[step.name])
            dep_shapes = [_spatial(env[d]) for d in deps]
            others = [env[n] for n in names if n not in dependent]
            flat = all(_flat_extent_free(o) for o in others) and all(
                _flat_extent_free(a) for a in step.args if not isinstance(a, fx.Node) and isinstance(a, torch.Tensor))
            if out is None or any(s is None for s in dep_shapes):
                kind = "full"
            elif kind == "window":
                kind = "window" if len(deps) == 1 and len(names) == 1 else "full"
            elif len(deps) == 1:
                kind = "pointwise" if dep_shapes[0] == out and flat else "full"
            else:
                same = all(s == out for s in dep_shapes)
                kind = "merge" if kind == "arith" and len(deps) == 2 and same and flat else "full"
        if kind != "const":
            dependent.add(step.name)
        program.steps[i] = replace(step, kind=kind, deps=deps)


def fold_batchnorm(program: Program, model: nn.Module, keep: set[str]) -> None:
    """Fold each eval-mode BatchNorm2d into the Conv2d that feeds only it (the BN step becomes the identity).

    `keep` names steps whose own value must stay what the model computes there (a unit target's layer)."""
    users: dict[str, list[str]] = {}
    for step in program.steps:
        for name in _nodes_in(step.args, step.kwargs):
            users.setdefault(name, []).append(step.name)
    for step in program.steps:
        if step.kind != "window" or step.module is None or step.name in keep:
            continue
        conv = model.get_submodule(step.module)
        if not isinstance(conv, nn.Conv2d) or len(users.get(step.name, [])) != 1:
            continue
        bn_step = program.step(users[step.name][0])
        if bn_step.module is None or bn_step.kind != "pointwise" or len(bn_step.args) != 1:
            continue
        bn = model.get_submodule(bn_step.module)
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_mean is None:
            continue
        scale = bn.running_var.rsqrt() if bn.eps == 0 else (bn.running_var + bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.bias is not None else 0)
        weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
        bias = shift if conv.bias is None else conv.bias.detach() * scale + shift
        full, patch = _conv_fns(weight.detach(), bias.detach(), conv.stride, conv.padding, conv.dilation,
                                conv.groups)
        program.steps[program.index[step.name]] = replace(step, fn=full, patch_fn=patch)
        program.steps[program.index[bn_step.name]] = replace(bn_step, fn=_identity)
