"""Integrated gradients and SmoothGrad sum their per-point gradients at a first convolution of the input and run
its backward once (`attribution._summed`): exact in float64 against Captum, and the plain path wherever the input
reaches the output any other way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from captum.attr import IntegratedGradients, Saliency
from torch import nn

import convscope.attribution as A
from convscope.attribution._summed import linear_input_layer
from convscope.hooks import frozen, hook_count
from convscope.models import load

from test_attribution_properties import _same, _state, inputs, net

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore::UserWarning")]


class SkipFromInput(nn.Module):
    """The input also reaches the output around the first conv."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Linear(3, 4)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x) + x).mean((2, 3)))


class OpBeforeConv(SkipFromInput):
    """A nonlinear op on the input before the first conv."""

    def forward(self, x):
        return self.head(torch.relu(self.conv(torch.tanh(x))).mean((2, 3)))


def _first(model: nn.Module, size: int = 16):
    spec = load(model)
    with frozen(spec.module) as module:
        return linear_input_layer(module, torch.zeros(1, 3, size, size, dtype=spec.dtype), key=model)


def test_the_first_convolution_is_found_only_where_it_alone_reads_the_input():
    assert _first(net()) == "conv1"
    assert _first(torchvision.models.resnet18(num_classes=3), 32) == "conv1"
    assert _first(SkipFromInput().double()) is None
    assert _first(OpBeforeConv().double()) is None
    assert _first(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 2)).double()) is None


def _reference_ig(model: nn.Module, x: torch.Tensor, targets: list[int], steps: int) -> torch.Tensor:
    """Gauss-Legendre integrated gradients with a zero baseline, one autograd call per path point."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    total = torch.zeros_like(x)
    for alpha, weight in zip(0.5 * (nodes + 1), 0.5 * weights):
        point = (alpha * x).requires_grad_(True)
        score = model(point)[torch.arange(len(x)), targets].sum()
        total += weight * torch.autograd.grad(score, point)[0]
    return total * x


@pytest.mark.parametrize("model", [net(), SkipFromInput().double(), OpBeforeConv().double()],
                         ids=["first-conv", "skip", "op-before"])
def test_integrated_gradients_are_exact_in_float64_on_both_paths(model):
    x, targets = inputs(3), [0, 2, 3]
    before = _state(model)
    ours = A.integrated_gradients(model, x, targets, steps=7, internal_batch_size=5, baseline="zero")
    expected = _reference_ig(model, x, targets, 7)
    assert torch.allclose(ours.attributions, expected, rtol=1e-10, atol=1e-13 * float(expected.abs().max()))
    # Captum's quadrature carries ~5e-9 of its own rounding: still the same map
    theirs = IntegratedGradients(model).attribute(x, baselines=0.0, target=targets, n_steps=7, internal_batch_size=5)
    assert float((ours.attributions - theirs).abs().max() / theirs.abs().max()) < 1e-7
    assert _same(model, before) and hook_count(model) == 0


def test_smoothgrad_sums_at_the_first_convolution_exactly():
    model, x = net(), inputs(2)
    noise = torch.randn(2, 3, *x.shape[1:], generator=torch.Generator().manual_seed(4), dtype=x.dtype)
    ours = A.smoothgrad(model, x, [1, 4], noise=noise, batch_size=4)
    expected = torch.stack([Saliency(model).attribute(x + noise[:, s], target=[1, 4], abs=False) for s in range(3)])
    assert torch.allclose(ours.attributions, expected.mean(0), rtol=1e-9, atol=1e-14)
