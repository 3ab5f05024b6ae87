"""Receptive fields: which input pixels each unit of a layer can see.

Along each spatial axis a layer's field has a `size`, a `stride` and an `offset`, all in input pixels: unit `i`
sees input pixels `offset + i * stride` up to `offset + i * stride + size - 1`. The offset is usually negative
(padding lets a field hang over the border); a unit's centre is `offset + i * stride + (size - 1) / 2`.
H and W are separate (non-square kernels and strides).

Two ways to get them, and every result says which it used (`method`):

- "analytic": trace the model with `torch.fx` and propagate (size, stride, offset) through convolutions and
  pools, adaptive pools, elementwise ops, and the union of inputs at additions and concatenations
  (see `convscope._rf_trace` for the rules). Exact, and independent of weights and input size (except at
  adaptive pools and global reductions, which depend on the input size).
- "measured": the bounding box of the nonzero gradient of the layer's centre unit (summed over channels) with
  respect to the input, averaged in absolute value over a few random inputs, on a float64 copy of the model in
  eval mode. Used where tracing fails or meets an op without a rule. The stride is the shift of the box between
  the centre unit and its neighbour (the size ratio when both boxes are clipped); a box that touches the input
  border is a lower bound (the note says so), as is any field whose outer pixels happen to get exactly zero
  gradient (max pooling, dead ReLUs) on all samples. Outputs are taken as (B, C, *spatial).
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from ._rf_trace import Axis, Unknown, to_size, trace_fields
from .errors import AmbiguousLayerError, ConvscopeError, LayerNotFoundError
from .hooks import capture, frozen, get_module, record_calls, split_call

__all__ = ["ReceptiveField", "receptive_fields", "receptive_field", "module_calls", "fields_for_calls"]

Method = Literal["auto", "analytic", "measured"]


@dataclass(frozen=True)
class ReceptiveField:
    """The input region seen by the units of one layer (per spatial axis: (h, w) for images).

    Attributes:
        size: field size in input pixels per axis.
        stride: input pixels between neighbouring units per axis; `None` when the layer's output has no spatial
            axes (after flatten / linear layers).
        offset: input coordinate of the first pixel of unit (0, 0)'s field per axis (may be negative).
        method: "analytic" (exact, from the graph) or "measured" (from gradients).
        uniform: every unit sees the same field (after a global pool, a flatten, a squeeze-excitation gate...).
        note: why a field was measured, or a caveat about it ("" when there is none).
    """

    size: tuple[int, ...]
    stride: tuple[int, ...] | None
    offset: tuple[int, ...]
    method: Literal["analytic", "measured"]
    uniform: bool = False
    note: str = ""

    def box(self, row: int = 0, col: int = 0) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of unit (row, col)'s field in input pixels, bottom and right exclusive.

        Not clipped to the image: clip with `max(0, top)` etc. when cropping. Uniform fields ignore row and col.
        """
        if len(self.size) != 2:
            raise ValueError(f"box() is for 2-D fields; this one has {len(self.size)} axes")
        shift = (0, 0) if self.uniform or self.stride is None else (row * self.stride[0], col * self.stride[1])
        top, left = self.offset[0] + shift[0], self.offset[1] + shift[1]
        return top, left, top + self.size[0], left + self.size[1]

    def center(self, row: int = 0, col: int = 0) -> tuple[float, float]:
        """Input coordinates (y, x) of the centre of unit (row, col)'s field."""
        top, left, bottom, right = self.box(row, col)
        return (top + bottom - 1) / 2, (left + right - 1) / 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _field(axes: tuple[Axis, ...], method: Literal["analytic", "measured"], note: str = "") -> ReceptiveField:
    jumps = tuple(ax.jump for ax in axes)
    return ReceptiveField(
        size=tuple(to_size(ax) for ax in axes),
        stride=None if any(j is None for j in jumps) else jumps,  # type: ignore[arg-type]
        offset=tuple(ax.lo for ax in axes),
        method=method,
        uniform=any(ax.uniform for ax in axes),
        note=note,
    )


def _call_names(log: Sequence[tuple[str, Any]]) -> list[tuple[str, str, int, Any]]:
    """[(path, shape)] in call order -> [(name, path, k, shape)] with `path#k` names for modules called twice+."""
    counts = Counter(path for path, _ in log)
    seen: Counter[str] = Counter()
    out = []
    for path, shape in log:
        k = seen[path]
        seen[path] += 1
        out.append((f"{path}#{k}" if counts[path] > 1 else path, path, k, shape))
    return out


def module_calls(module: nn.Module, example: torch.Tensor) -> list[tuple[str, str, int, torch.Size | None]]:
    """Run one probe pass (eval, no grad) and return every submodule call as (name, path, k, output shape), in the
    order calls finish; `name` is `path#k` for modules that run more than once, else `path`."""
    with frozen(module) as net, torch.inference_mode(), record_calls(net) as log:
        net(example)
    return _call_names(log)


def _select(calls, layers: Sequence[str], module: nn.Module) -> list[str]:
    by_path: dict[str, list[str]] = {}
    for name, path, _, _ in calls:
        by_path.setdefault(path, []).append(name)
    chosen = []
    for layer in layers:
        base, k = split_call(layer)
        get_module(module, base)  # unknown names raise with suggestions
        names = by_path.get(base)
        if not names:
            raise LayerNotFoundError(f"layer {base!r} did not run in the forward pass (is it used by forward()?)")
        if k is None and len(names) > 1:
            raise AmbiguousLayerError(f"layer {base!r} runs {len(names)} times per forward pass; address one call: "
                                      + ", ".join(repr(n) for n in names))
        if k is not None and k >= len(names):
            raise LayerNotFoundError(f"layer {base!r} ran {len(names)} time(s); call #{k} does not exist "
                                     f"(use #0..#{len(names) - 1})")
        chosen.append(names[0] if k is None else names[k])
    return chosen


def _analytic(module: nn.Module, example: torch.Tensor, calls) -> dict[str, ReceptiveField | Unknown]:
    with frozen(module) as net, torch.inference_mode():
        traced = trace_fields(net, example)
    expected = Counter(path for _, path, _, _ in calls)
    found = Counter(path for path, _ in traced)
    states: dict[tuple[str, int], Any] = {}
    seen: Counter[str] = Counter()
    for path, state in traced:
        states[(path, seen[path])] = state
        seen[path] += 1
    out: dict[str, ReceptiveField | Unknown] = {}
    for name, path, k, _ in calls:
        if found[path] != expected[path]:
            out[name] = Unknown(f"{path} ran {expected[path]} times but was traced {found[path]} times")
            continue
        state = states[(path, k)]
        if isinstance(state, tuple):
            out[name] = _field(state, "analytic")
        elif isinstance(state, Unknown):
            out[name] = state
    return out


def _box(grad: torch.Tensor) -> list[tuple[int, int]] | None:
    """(lo, hi) per spatial axis of the nonzero entries of `grad` (B, C, *spatial), or None when all are zero."""
    mask = grad.abs().sum(dim=(0, 1)) > 0
    if not bool(mask.any()):
        return None
    box = []
    for axis in range(mask.ndim):
        other = tuple(d for d in range(mask.ndim) if d != axis)
        idx = torch.nonzero(mask.any(dim=other) if other else mask).flatten()
        box.append((int(idx.min()), int(idx.max())))
    return box


def _measure(module: nn.Module, example: torch.Tensor, calls, names: Sequence[str], *, samples: int, seed: int,
             notes: dict[str, str]) -> dict[str, ReceptiveField]:
    """Gradient-measured fields of `names` (tensor outputs laid out (B, C, *spatial)): one forward pass, one
    backward per layer. The batch holds the random inputs for the centre unit and, per axis, one input for the
    unit one step further along it, whose box's shift is the stride."""
    shapes = {name: shape for name, _, _, shape in calls}
    names = [n for n in names if shapes.get(n) is not None]
    if not names:
        return {}
    try:
        work = copy.deepcopy(module).to(torch.float64)
        dtype = torch.float64
    except Exception:  # a model that cannot be copied: measure it in place, in its own dtype (restored by frozen)
        work, dtype = module, example.dtype
    generator = torch.Generator().manual_seed(seed)
    spatial = tuple(example.shape[2:])
    base = torch.randn((samples, *example.shape[1:]), generator=generator, dtype=dtype)
    # batch: all samples for the centre unit, then the first sample once per axis for the shifted unit
    x = torch.cat([base] + [base[:1]] * len(spatial)).to(example.device).requires_grad_(True)
    slices = [slice(0, samples)] + [slice(samples + a, samples + a + 1) for a in range(len(spatial))]
    out: dict[str, ReceptiveField] = {}
    with frozen(work) as net, capture(net, names, detach=False) as cap:
        net(x)
        for name in names:
            y = cap[name]
            if not y.requires_grad:
                continue
            has_space = y.ndim == example.ndim
            centre = [n // 2 for n in y.shape[2:]] if has_space else []
            units = [centre] + [[c + (a == axis) for a, c in enumerate(centre)] for axis in range(len(centre))]
            score = y.sum() if not has_space else sum(
                y[(rows, slice(None), *unit)].sum()
                for rows, unit in zip(slices, units) if all(u < n for u, n in zip(unit, y.shape[2:])))
            (grad,) = torch.autograd.grad(score, x, retain_graph=True, allow_unused=True)
            if grad is None:
                continue
            boxes = [_box(grad[rows]) for rows in slices]
            first = _box(grad[:1])  # the centre unit on the input the shifted units saw
            if boxes[0] is None:
                continue
            sizes, offsets, strides, clipped = [], [], [], False
            for axis, n_in in enumerate(spatial):
                lo, hi = boxes[0][axis]
                low_clip, high_clip = lo == 0, hi == n_in - 1
                clipped |= low_clip or high_clip
                sizes.append(hi - lo + 1)
                if not has_space:
                    offsets.append(lo)
                    continue
                shifted = boxes[1 + axis]
                if shifted is not None and first is not None and first[axis][0] > 0 and shifted[axis][0] > 0:
                    stride = shifted[axis][0] - first[axis][0]
                elif shifted is not None and first is not None and max(first[axis][1], shifted[axis][1]) < n_in - 1:
                    stride = shifted[axis][1] - first[axis][1]
                else:  # both sides clipped or no neighbour: estimate from the size ratio
                    stride = max(1, round(n_in / y.shape[2 + axis]))
                strides.append(stride)
                offsets.append(lo - centre[axis] * stride)
            note = notes.get(name, "")
            if clipped:
                note = (note + "; " if note else "") + "touches the input border: the true field may be larger"
            out[name] = ReceptiveField(tuple(sizes), tuple(strides) if has_space else None, tuple(offsets),
                                       "measured", uniform=not has_space, note=note)
    return out


def receptive_fields(
    model: Any,
    *,
    layers: Sequence[str] | None = None,
    input_size: tuple[int, int] | None = None,
    method: Method = "auto",
    samples: int = 3,
    seed: int = 0,
) -> dict[str, ReceptiveField]:
    """Receptive field of every module call (or of `layers`), keyed by layer name (`path`, or `path#k` for modules
    that run more than once per forward pass), in call order.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string (through `convscope.models.load`).
        layers: names to compute (default: every submodule call); unknown or ambiguous names raise.
        input_size: (H, W) of the probe input (default: the model's `input_size`). Fields do not depend on it
            except past adaptive pools and global reductions, and through clipping of measured fields.
        method: "auto" (analytic where possible, measured elsewhere), "analytic" (layers without an analytic
            field are left out; an untraceable model raises), or "measured".
        samples, seed: random inputs for measured fields.

    Layers whose output does not depend on the input, or is not a tensor, have no entry.
    """
    from .models import load

    spec = load(model)
    module = spec.module
    example = spec.example_input()
    if input_size is not None:
        example = example.new_zeros((1, spec.channels, *input_size))
    if example.ndim < 3:
        return {}
    calls = module_calls(module, example)
    wanted = _select(calls, layers, module) if layers is not None else [name for name, _, _, _ in calls]
    return fields_for_calls(module, example, calls, wanted, method=method, samples=samples, seed=seed)


def fields_for_calls(module: nn.Module, example: torch.Tensor, calls, wanted: Sequence[str], *, method: Method,
                     samples: int, seed: int) -> dict[str, ReceptiveField]:
    """`receptive_fields` after the probe pass: `calls` from `module_calls`, `wanted` a list of their names."""
    found: dict[str, ReceptiveField | Unknown] = {}
    if method in ("auto", "analytic"):
        try:
            found = _analytic(module, example, calls)
        except Exception as error:  # fx cannot trace data-dependent control flow and more
            if method == "analytic":
                raise ConvscopeError(f"cannot trace {type(module).__name__} with torch.fx ({type(error).__name__}: "
                                     f"{error}); use method='measured'") from None
            found = {name: Unknown(f"torch.fx could not trace the model ({type(error).__name__})")
                     for name in wanted}
    elif method == "measured":
        found = {name: Unknown("") for name in wanted}
    else:
        raise ValueError(f"method must be 'auto', 'analytic' or 'measured', not {method!r}")
    measured: dict[str, ReceptiveField] = {}
    to_measure = [n for n in wanted if isinstance(found.get(n), Unknown)]
    if method != "analytic" and to_measure:
        notes = {n: found[n].reason for n in to_measure}  # type: ignore[union-attr]
        measured = _measure(module, example, calls, to_measure, samples=samples, seed=seed, notes=notes)
    out: dict[str, ReceptiveField] = {}
    for name in wanted:
        field = found.get(name)
        if isinstance(field, ReceptiveField):
            out[name] = field
        elif name in measured:
            out[name] = measured[name]
    return out


def receptive_field(model: Any, layer: str, **options: Any) -> ReceptiveField:
    """Receptive field of one layer (`path` or `path#k`); options as in `receptive_fields`. Raises
    `ConvscopeError` when the layer has none (its output does not depend on the input)."""
    fields = receptive_fields(model, layers=[layer], **options)
    if not fields:
        raise ConvscopeError(f"layer {layer!r} has no receptive field (its output does not depend on the input, or "
                             "no analytic rule applies; try method='measured')")
    return next(iter(fields.values()))
