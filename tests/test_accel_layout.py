"""`accel.exact_pools`: max-pool modules of a working copy meet NCHW CPU maps in channels-last and return what the
NCHW kernel returns, bit for bit (values, layout), ties, NaN, infinities and signed zeros included; a float32 scan
run with it equals one run inside `accel.plain()`; other modules, layouts and models are left as they are."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from convscope import accel, hooks
from convscope.accel import exact_pools


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def _awkward(shape, seed: int) -> torch.Tensor:
    """Random values on a coarse grid (many ties within a window), with NaN, +-inf and -0 sprinkled in."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=g).float() / 2
    flat = x.view(-1)
    picks = torch.randperm(flat.numel(), generator=g)[:40]
    flat[picks[:10]] = float("nan")
    flat[picks[10:20]] = float("inf")
    flat[picks[20:30]] = float("-inf")
    flat[picks[30:]] = -0.0
    return x


class _Seen(nn.Module):
    """Records whether the maps it sees are channels-last, and passes them on."""

    def __init__(self) -> None:
        super().__init__()
        self.layouts: list[bool] = []

    def forward(self, x):
        self.layouts.append(x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous())
        return x


@pytest.mark.parametrize("kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, ceil_mode=True),
                                    dict(kernel_size=3, stride=1, padding=1), dict(kernel_size=(2, 3), dilation=2)])
def test_pool_modules_return_the_nchw_kernels_bits(kwargs):
    net = nn.Sequential(nn.MaxPool2d(**kwargs), nn.MaxPool2d(**kwargs), _Seen())
    x = _awkward((3, 16, 25, 23), seed=len(str(kwargs)))
    expected = net(x)
    with hooks.frozen(net) as work, exact_pools(work) as pools:
        got = work(x)
    assert pools == 2
    assert got.is_contiguous() and got.shape == expected.shape
    assert torch.equal(_bits(got), _bits(expected))
    assert net[2].layouts[0] is False  # the module after the pools sees NCHW, as without the switch


def test_the_pool_runs_channels_last_and_a_capture_of_it_sees_nchw():
    seen = []
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.MaxPool2d(2), nn.ReLU())
    net[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))  # the user's own hook
    x = torch.randn(2, 3, 12, 12)
    kernel = []
    with hooks.frozen(net) as work, exact_pools(work), hooks.capture(work, ["1"]) as cap:
        handle = work[1].register_forward_pre_hook(
            lambda m, args: kernel.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        work(x)
        handle.remove()
        captured = cap["1"]
    assert kernel == [True]  # what the pool itself gets
    assert captured.is_contiguous()
    assert seen == [True]  # the user's hook ran first and saw the map as it came
    with hooks.frozen(net) as work:  # the switch leaves nothing behind
        work(x)
    assert seen == [True, True]


def test_where_it_does_nothing():
    net = nn.Sequential(nn.MaxPool2d(2, return_indices=True))
    x = torch.randn(2, 4, 8, 8)
    with hooks.frozen(net) as work, exact_pools(work) as pools:
        assert pools == 0  # indices asked for: left as written
    plain_net = nn.Sequential(nn.MaxPool2d(2))
    with accel.plain(), hooks.frozen(plain_net) as work, exact_pools(work) as pools:
        assert pools == 0
    with hooks.frozen(plain_net) as work, exact_pools(work):
        out = work(x.contiguous(memory_format=torch.channels_last))
        one = work(torch.randn(2, 1, 8, 8))  # one channel: NCHW and channels-last are the same layout
    assert out.is_contiguous(memory_format=torch.channels_last)  # a channels-last map keeps its own kernel
    assert one.is_contiguous()
    scripted = torch.jit.script(nn.Sequential(nn.MaxPool2d(2)))
    with exact_pools(scripted) as pools:
        assert pools == 0  # TorchScript runs itself: no hooks on the user's model


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_a_float32_scan_equals_one_of_the_model_as_written():
    """fashion-cnn pools after conv1: a scan of the pool itself and of conv2 (behind it) gives the same top-k values
    and positions, statistics and histograms with the switch as inside `accel.plain()`."""
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kernel", [(2, 2), (3, 3), (2, 3)])
def test_strided_max_pool_equals_max_pool_in_value(dtype, kernel):
    """`StridedMaxPool2d` gives F.max_pool2d's values (NaN where it has NaN, infinities, ties; odd sizes cut as floor
    mode cuts them), on NCHW and channels-last maps, keeping the layout; only the sign of a zero may differ."""
    pool = accel.StridedMaxPool2d(kernel)
    for seed, shape in enumerate([(3, 5, 9, 11), (2, 4, 8, 6), (1, 2, 7, 7)]):
        x = _awkward(shape, seed).to(dtype)
        for layout in (torch.contiguous_format, torch.channels_last):
            given = x.contiguous(memory_format=layout)
            want = torch.nn.functional.max_pool2d(given, kernel)
            got = pool(given)
            assert got.shape == want.shape and got.dtype == dtype
            assert torch.equal(got.isnan(), want.isnan())
            assert torch.equal(torch.nan_to_num(got, nan=7.0), torch.nan_to_num(want, nan=7.0)), (seed, layout)
            if layout is torch.channels_last:
                assert got.is_contiguous(memory_format=torch.channels_last)


def test_strided_pools_replace_only_non_overlapping_pools():
    net = nn.Sequential(nn.Conv2d(1, 2, 1), nn.MaxPool2d(2), nn.MaxPool2d(3, 2), nn.MaxPool2d(2, ceil_mode=True),
                        nn.MaxPool2d(2, padding=1), nn.MaxPool2d((2, 3)), nn.MaxPool2d(2, return_indices=True))
    assert accel.strided_pools(net) == 2
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Conv2d", "StridedMaxPool2d", "MaxPool2d", "MaxPool2d", "MaxPool2d", "StridedMaxPool2d",
                     "MaxPool2d"]
    other = nn.Sequential(nn.MaxPool2d(2))
    with accel.plain():
        assert accel.strided_pools(other) == 0
    assert type(other[0]) is nn.MaxPool2d


def test_bf16_scan_copy_has_strided_pools_and_the_model_keeps_its_own():
    from convscope.analysis._engine import _bf16_network
    from convscope.models import load

    spec = load("convscope:fashion-cnn")
    copy = _bf16_network(spec.module, spec.example_input(), ["conv2"])
    assert type(copy.pool1).__name__ == "StridedMaxPool2d"
    assert type(spec.module.pool1) is nn.MaxPool2d
    x = torch.rand(4, 1, 28, 28)
    with torch.inference_mode():  # channels-last convolutions round differently: the same function, not bits
        assert torch.allclose(copy(x.contiguous(memory_format=torch.channels_last)), spec.module.eval()(x),
                              rtol=1e-5, atol=1e-5)
