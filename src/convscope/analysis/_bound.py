"""A proven bf16 error bound for a scanned layer that reads the model's input directly (a first convolution or
linear layer), so its certificate need not assume one.

Such a layer computes the same function of the same input in both passes, and the only differences are bfloat16
roundings of one layer's operands and output: under autocast the input x, the weight w and the bias b are rounded
to bfloat16 (relative error at most u = 2^-8 each), the products are accumulated in float32 (oneDNN and cuDNN do),
and the output y16 is rounded to bfloat16 once. With S = sum |w| |x| <= ||w_c||_1 max|x| and n terms,

    |s - y| <= (2u + u^2) S + u |b| + (g16 + g32) (1 + u)^2 (S + |b|)     =: A   (s: the bf16 pass before its
                                                                                    output rounding, y: exact)

where g16 and g32 are the float32 accumulation error factors of the two passes (gamma_n = n 2^-24 / (1 - n 2^-24),
for any order of summation; the CPU's oneDNN convolutions and GEMMs sum directly). On a GPU the float32 pass may run
in TF32, so 2^-10 is added there; that covers TF32, and is generous for cuDNN's Winograd or FFT algorithms, but is
not proved for them. The output rounding adds u |s|. For a unit's spatial maximum (|max a - max b| <= max |a - b|),
an input whose bf16 score is below (1 - u) t - (1 + u) A cannot reach t in float32, for either sign of t: the
margin is d = u |t| + (1 + u) A. Only for `by="max"`: a spatial mean's bfloat16 sum is rounded once more.

The bound needs the layer's input to be the model input, bit for bit, on every batch: `InputRange` checks exactly
that during the bf16 pass (and records max |x|); any batch where it fails, or a non-finite input, drops the bound
and the layer keeps the assumed margin.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..hooks import INPUT_SUFFIX
from ._collect import Collector, LayerBatch, LayerPlan, Plan, State

__all__ = ["InputRange", "first_layers", "input_bounds", "proven_margin", "UNIT_ROUNDOFF", "relative_margin"]

UNIT_ROUNDOFF = 2.0 ** -8
"""bfloat16's unit roundoff (8 significant bits, round to nearest)."""

_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def first_layers(module: nn.Module, layers: Sequence[LayerPlan]) -> tuple[str, ...]:
    """The layers that may read the model input directly: the first scanned layer, when it is the first call of a
    plain convolution or linear module (whether it really reads the input is checked on every batch)."""
    if not layers:
        return ()
    first = layers[0]
    if first.call != 0 or type(module.get_submodule(first.path)) not in _LINEAR:
        return ()
    return (first.name,)


class InputRange(Collector):
    """For each of `names`, whether its layer's input equalled the model input on every batch, and max |x| over
    them: {name: {"same": bool tensor, "max": float32 tensor}}."""

    name = "inputs"

    def __init__(self, names: Sequence[str], paths: Sequence[str]) -> None:
        self.names = tuple(names)
        self.layers = tuple(f"{path}{INPUT_SUFFIX}" for path in paths)
        self._to_name = dict(zip(self.layers, self.names))
        self._inputs: torch.Tensor | None = None

    def empty(self, plan: Plan) -> State:
        return {name: {"same": torch.tensor(True), "max": torch.tensor(0.0)} for name in self.names}

    def start_batch(self, state: State, inputs: torch.Tensor, indices: torch.Tensor, labels: torch.Tensor) -> None:
        self._inputs = inputs

    def capture(self, state: State, name: str, output: torch.Tensor) -> None:
        layer = state[self._to_name[name]]
        given, self._inputs = self._inputs, None  # keep no batch alive (nor pickle one to a Ray worker)
        same = (isinstance(output, torch.Tensor) and given is not None and output.shape == given.shape
                and output.dtype == given.dtype and bool(torch.equal(output, given.to(output.device))))
        top = output.detach().abs().amax().float().cpu() if same else torch.tensor(float("inf"))
        layer["same"] = layer["same"] & torch.tensor(same) & torch.isfinite(top)
        layer["max"] = torch.maximum(layer["max"], top)

    def update(self, state: State, batch: LayerBatch) -> None:
        return None

    def merge(self, a: State, b: State) -> State:
        return {name: {"same": a[name]["same"] & b[name]["same"], "max": torch.maximum(a[name]["max"], b[name]["max"])}
                for name in a}


def input_bounds(module: nn.Module, layers: Sequence[LayerPlan], state: State, device: torch.device
                 ) -> dict[str, torch.Tensor]:
    """{layer: A (U,)} for the layers whose input was the model input on every batch (see the module docstring)."""
    u, out = UNIT_ROUNDOFF, {}
    for lp in layers:
        got = state.get(lp.name)
        if got is None or not bool(got["same"]):
            continue
        layer = module.get_submodule(lp.path)
        weight = layer.weight.detach().double().cpu()[list(lp.channels)].flatten(1)
        bias = layer.bias.detach().double().cpu()[list(lp.channels)].abs() if layer.bias is not None else 0.0
        n = weight.shape[1] + 1
        gamma = n * 2.0 ** -24 / (1 - n * 2.0 ** -24)
        ref = gamma + (2.0 ** -10 if device.type != "cpu" else 0.0)  # the float32 pass may run in TF32 on a GPU
        s = weight.abs().sum(1) * float(got["max"])
        a = (2 * u + u * u) * (1 + gamma) * s + u * bias + (gamma + ref) * (1 + u) ** 2 * (s + bias) + n * 2.0 ** -120
        out[lp.name] = torch.as_tensor(a, dtype=torch.float64).expand(len(lp.channels)).float() * (1 + 2 ** -20)
    return out


def relative_margin(t: torch.Tensor, width: float) -> torch.Tensor:
    """width |t| (0 where t is infinite): the margin every bf16 certificate threshold is built from."""
    return width * t.abs().nan_to_num(posinf=0.0, neginf=0.0)


def proven_margin(t: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """d = u |t| + (1 + u) A: below t - d in bf16 means below t in float32 (A from `input_bounds`)."""
    u = UNIT_ROUNDOFF + 2.0 ** -20  # the slack covers the float32 roundings of t - d and b + d
    return relative_margin(t, u) + (1 + u) * a