"""`accel.layout.ChannelsLastPools`: max-pools of NCHW CPU maps run channels-last and return what the NCHW kernel
returns, bit for bit (values, indices, layout), ties, NaN, infinities and signed zeros included; a float32 scan run
with it equals one run without it; anything else passes through untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.accel.layout import ChannelsLastPools


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t.contiguous()


def _awkward(shape, seed: int) -> torch.Tensor:
    """Random values rounded to a coarse grid (many ties within a window), with NaN, +-inf and +-0 sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).float() / 2
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:40]
    flat[picks[:10]] = float("nan")
    flat[picks[10:20]] = float("inf")
    flat[picks[20:30]] = float("-inf")
    flat[picks[30:]] = -0.0
    return x


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, ceil_mode=True),
                                    dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=(2, 3), dilation=2)])
def test_pools_equal_the_nchw_kernel_bit_for_bit(kwargs):
    x = _awkward((3, 16, 13, 11), seed=len(str(kwargs)))
    expected, expected_at = F.max_pool2d(x, return_indices=True, **kwargs)
    calls = [lambda: F.max_pool2d(x, **kwargs), lambda: torch.max_pool2d(x, **kwargs),
             lambda: nn.MaxPool2d(**kwargs)(x)]
    with ChannelsLastPools():
        got = [call() for call in calls]
        got_values, got_at = F.max_pool2d(x, return_indices=True, **kwargs)
        keyword = F.max_pool2d(input=x, **kwargs)
    for out in [*got, got_values, keyword]:
        assert out.is_contiguous() and out.shape == expected.shape
        assert torch.equal(_bits(out), _bits(expected))
    assert got_at.is_contiguous() and torch.equal(got_at, expected_at)


def test_the_mode_changes_the_layout_it_runs_in():
    """It is not a no-op: the pool sees a channels-last input (else it would buy nothing)."""
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.max_pool2d:
                seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 8, 6, 6)
    with Spy(), ChannelsLastPools():  # the last mode entered sees a call first
        torch.max_pool2d(x, 2)
    with Spy():
        torch.max_pool2d(x, 2)
    assert seen == [True, False]


def test_other_calls_and_other_inputs_pass_through():
    x = torch.randn(2, 4, 6, 6)
    one_channel = torch.randn(2, 1, 6, 6)  # NCHW and channels-last are the same layout: nothing to do
    three_d = torch.randn(4, 6, 6)
    with ChannelsLastPools():
        assert torch.equal(F.relu(x), x.clamp_min(0))
        assert torch.equal(F.avg_pool2d(x, 2), F.avg_pool2d(x.clone(), 2))
        assert torch.equal(F.max_pool2d(one_channel, 2), torch.max_pool2d(one_channel.clone(), 2))
        assert torch.equal(F.max_pool2d(three_d, 2), torch.max_pool2d(three_d.clone(), 2))
        out = F.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2)
    assert out.is_contiguous(memory_format=torch.channels_last)  # a channels-last input keeps its own kernel


def test_gradients_flow_through_the_copy():
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    with ChannelsLastPools():
        F.max_pool2d(x, 2).sum().backward()
    grad = x.grad
    x.grad = None
    F.max_pool2d(x, 2).sum().backward()
    assert torch.equal(grad, x.grad)


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_a_float32_scan_equals_one_of_the_model_as_written():
    """fashion-cnn pools after conv1: a scan of conv2 (behind the pool) and of the pool itself gives the same top-k
    values and positions, statistics and histograms with the layout switch as inside `accel.plain()`."""
    from convscope import accel
    from convscope.analysis import scan

    layers = ["pool1", "conv2"]
    fast = scan("convscope:fashion-cnn", "fashion-mnist", layers, k=5, batch_size=32, limit=160)
    with accel.plain():
        plain = scan("convscope:fashion-cnn", "fashion-mnist", layers, k=5, batch_size=32, limit=160)
    for layer in layers:
        units = fast.stats[layer].mean.numel()
        assert [fast.topk.examples(layer, u) for u in range(units)] == [plain.topk.examples(layer, u)
                                                                      for u in range(units)]
        assert torch.equal(fast.stats[layer].mean, plain.stats[layer].mean)
        assert torch.equal(fast.stats[layer].hist, plain.stats[layer].hist)
