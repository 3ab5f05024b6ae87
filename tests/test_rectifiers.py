"""`convscope._rectifiers`: which calls are rectifiers, and the base mode that reroutes them through a Function."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope._rectifiers import RectifierMode, rectify
from convscope.hooks import function_mode


class _Pass(torch.autograd.Function):
    """The rectifier's forward; backward passes the gradient unchanged, so a rerouted call is visible in x.grad."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, mode: "_Probe", low: float, high: float | None, inplace: bool):
        mode.seen.append((low, high, inplace))
        return rectify(ctx, x, low, high, inplace)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return grad, None, None, None, None


class _Probe(RectifierMode):
    function = _Pass

    def __init__(self, relu_only: bool = False):
        super().__init__()
        self.seen: list[tuple[float, float | None, bool]] = []
        self.relu_only = relu_only

    def takes(self, high: float | None) -> bool:
        return high is None or not self.relu_only


CALLS = {
    "nn.ReLU": (nn.ReLU(), (0.0, None, False)),
    "nn.ReLU(inplace)": (nn.ReLU(inplace=True), (0.0, None, True)),
    "F.relu(input=)": (lambda x: F.relu(input=x), (0.0, None, False)),
    "F.relu_": (F.relu_, (0.0, None, True)),
    "Tensor.relu": (torch.Tensor.relu, (0.0, None, False)),
    "Tensor.relu_": (torch.Tensor.relu_, (0.0, None, True)),
    "nn.ReLU6": (nn.ReLU6(), (0.0, 6.0, False)),
    "F.relu6(inplace)": (lambda x: F.relu6(x, inplace=True), (0.0, 6.0, True)),
    "Hardtanh(0, 2)": (nn.Hardtanh(0.0, 2.0), (0.0, 2.0, False)),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_every_rectifier_call_is_rerouted_with_its_own_forward(name):
    call, expected = CALLS[name]
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 4
    reference = call(x.clone())
    leaf = x.clone().requires_grad_(True)
    probe = _Probe()
    with function_mode(probe):
        out = call(leaf * 1.0)  # a non-leaf, so in-place calls are allowed
    assert probe.seen == [expected]
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    out.sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(x))  # the Function's backward, not the rectifier's mask


@pytest.mark.parametrize("call", [nn.Hardtanh(), nn.LeakyReLU(), nn.GELU(), lambda x: x.clamp(min=0)])
def test_other_nonlinearities_are_left_alone(call):
    probe = _Probe()
    with function_mode(probe):
        call(torch.randn(4, requires_grad=True) * 1.0)
    assert probe.seen == []


def test_calls_without_gradient_or_declined_run_as_written():
    probe = _Probe(relu_only=True)
    with function_mode(probe):
        F.relu(torch.randn(4))  # no gradient needed
        with torch.no_grad():
            F.relu(torch.randn(4, requires_grad=True))
        x = torch.randn(4, requires_grad=True)
        F.relu6(x)  # declined by `takes`
        F.relu(x)
    assert probe.seen == [(0.0, None, False)]
