"""Sums of input gradients over many points (integrated gradients' path, SmoothGrad's noisy copies), with the
first layer's backward done once per input instead of once per point.

Most image networks begin with a convolution applied to the input itself, and that is the single most expensive
backward op of the whole network on a CPU: the input gradient of a 3-channel, stride-2 convolution (resnet18's 7x7
conv1: ~14% of a forward+backward at batch 25, more than three times its forward; oneDNN's backward-data kernel is
weak for 3 channels). It is also linear: the input gradient at any point is `conv^T(g)`, with g the gradient at the
conv's output, so the weighted sum over points is `conv^T(sum_j w_j g_j)`. `SummedGradients` therefore stops each
point's backward at the first layer's output (its output becomes an autograd leaf), sums there, and runs the
first layer's backward once per input at the end. Same numbers up to float rounding.

Which layer is first, and whether the input really reaches the output only through it, unchanged, is checked once
per model and input shape on a probe (`linear_input_layer`): the first module to run must be an `nn.Conv2d`, the
input must have no other path to the output, and the first layer's backward of the probe's leaf gradient must
equal the probe's true input gradient. Anything else (an op before the conv, a skip from the input, a model that
starts with something else, TorchScript) takes the plain path: one full backward per batch of points.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .._working import copyable
from ..hooks import capture, record_calls
from ..models import ModelSpec
from ._core import ResolvedTarget, forward_target, select_target
from .gradients import input_gradients

__all__ = ["SummedGradients", "linear_input_layer"]

# user's model -> {input shape (C, H, W): first layer path, or None for the plain path}
_INPUT_LAYERS: "weakref.WeakKeyDictionary[nn.Module, dict[tuple[int, ...], str | None]]" = weakref.WeakKeyDictionary()


def linear_input_layer(module: nn.Module, x: torch.Tensor, key: nn.Module | None = None) -> str | None:
    """The path of the `nn.Conv2d` that alone reads the input of `module` (a frozen network), or None.

    `x` (B, C, H, W) gives the input shape; `key` (default `module`) is the model the answer is remembered for.
    Checked once per model and input shape with a seeded probe (see the module docstring)."""
    known = _INPUT_LAYERS.setdefault(key if key is not None else module, {})
    shape = tuple(x.shape[1:])
    if shape not in known:
        known[shape] = _probe(module, x)
    return known[shape]


def _probe(module: nn.Module, x: torch.Tensor) -> str | None:
    if not copyable(module):  # TorchScript inside: no hooks to stop a backward at a layer, so the plain path
        return None
    with torch.inference_mode(), record_calls(module) as calls:
        output = module(x[:1])
    if not calls or not isinstance(output, torch.Tensor):
        return None
    first = calls[0][0]  # the first call to finish is a leaf module reading the input first
    layer = module.get_submodule(first)
    if not isinstance(layer, nn.Conv2d) or sum(1 for name, _ in calls if name == first) != 1:
        return None
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(x[:1].shape, generator=generator, dtype=torch.float64).to(x.device, x.dtype)
    weights = torch.randn(output.shape, generator=generator, dtype=torch.float64).to(x.device, output.dtype)
    with torch.enable_grad():
        point = probe.clone().requires_grad_(True)
        with capture(module, [first], leaves=[first]) as cap:
            score = (module(point) * weights).sum()
            leaf = cap[first]
        at_layer, elsewhere = torch.autograd.grad(score, [leaf, point], allow_unused=True)
        if at_layer is None or elsewhere is not None:  # the input reaches the output around the first layer
            return None
        point = probe.clone().requires_grad_(True)
        (exact,) = torch.autograd.grad((module(point) * weights).sum(), point)
        point = probe.clone().requires_grad_(True)
        (through,) = torch.autograd.grad(layer(point), point, at_layer)
    scale = float(exact.abs().max())
    return first if scale > 0 and torch.allclose(through, exact, rtol=1e-4, atol=1e-5 * scale) else None


class SummedGradients:
    """`sum_j w_j d score(p_j) / d p_j` per input b, accumulated batch by batch of points p_j (N, C, H, W).

    Use inside the frozen network's block: `add(points, index, weights)` for each batch (`index` (N,) the input each
    point belongs to, `weights` (N,) or None for 1), then `total()` -> (B, C, H, W)."""

    def __init__(self, spec: ModelSpec, x: torch.Tensor, target: ResolvedTarget, layer: str | None) -> None:
        self.spec, self.x, self.target, self.layer = spec, x, target, layer
        self.sum: torch.Tensor | None = None

    def add(self, points: torch.Tensor, index: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        target = select_target(self.spec, self.target, index)
        if self.layer is None:
            grads, _, _ = input_gradients(self.spec, points, target)
        else:
            with torch.enable_grad():
                scores, _, found = forward_target(self.spec, points.detach(), target, [self.layer], leaves=True)
                (grads,) = torch.autograd.grad(scores.sum(), found[self.layer])
        if self.sum is None:
            self.sum = grads.new_zeros((self.x.shape[0], *grads.shape[1:]))
        # sum[b] += sum_{n: index[n] = b} w_n grads[n] as one (B, N) x (N, D) product: no weighted copy of the
        # gradients, and no index_add_, whose multi-threaded CPU kernel is erratic (1-60 ms for the same call).
        mixing = grads.new_zeros(self.x.shape[0], grads.shape[0])
        mixing[index, torch.arange(grads.shape[0], device=index.device)] = 1.0 if weights is None else weights
        self.sum.view(self.sum.shape[0], -1).addmm_(mixing, grads.reshape(grads.shape[0], -1))

    def total(self) -> torch.Tensor:
        if self.sum is None:
            return torch.zeros_like(self.x)
        if self.layer is None:
            return self.sum
        layer = self.spec.module.get_submodule(self.layer)
        with torch.enable_grad():
            point = self.x.detach().requires_grad_(True)
            (grads,) = torch.autograd.grad(layer(point), point, self.sum)
        return grads
