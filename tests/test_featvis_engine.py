"""The render loop's convolution kernels (`featvis._engine`): the same values and input gradients as `nn.Conv2d`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope import hooks
from convscope.featvis import channel, render
from convscope.featvis._engine import ImageConv, PointwiseConv, _Image, engine
from convscope.models import ModelSpec

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch built without oneDNN")]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("bias", [True, False])
def test_values_and_input_gradients_equal_conv2d(layout, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 7, 1, bias=bias).requires_grad_(False)
    x = torch.randn(3, 12, 5, 9).contiguous(memory_format=layout).requires_grad_(True)
    grad_out = torch.randn(3, 7, 5, 9)
    expected = conv(x)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    got = PointwiseConv(conv)(x)
    (got_grad,) = torch.autograd.grad(got, x, grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [
    # (batch, channels, height, width, out, kernel, stride, padding)
    (2, 3, 32, 29, 8, 7, 2, 3),  # a GoogLeNet/ResNet stem
    (3, 1, 13, 13, 4, 3, 2, 1),
    (2, 4, 17, 20, 5, 5, 3, 2),  # odd sizes, stride 3
    (2, 3, 15, 16, 4, 4, 2, 0),  # kernel a multiple of the stride, no padding
    (1, 2, 9, 11, 3, 2, 3, 1),  # kernel smaller than the stride: phases without taps
])
def test_image_conv_gradients_equal_conv2d_in_float64(shape):
    b, c, h, w, o, k, s, p = shape
    torch.manual_seed(0)
    conv = nn.Conv2d(c, o, k, stride=s, padding=p).requires_grad_(False)
    x = torch.randn(b, c, h, w, dtype=torch.float64, requires_grad=True)
    expected = conv.double()(x)
    grad_out = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, x, grad_out)
    image = ImageConv(conv.float()).double()
    got = _Image.apply(x, image.weight, image.bias, image.phases, s, (p, p))
    (got_grad,) = torch.autograd.grad(got, x, grad_out)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-12, atol=1e-12)


def test_only_frozen_eligible_convolutions_are_replaced():
    net = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, padding=3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 8, 1, stride=2),
                        nn.Conv2d(8, 8, 1, groups=2), nn.Conv2d(8, 4, 1), nn.Conv2d(4, 4, 3, stride=2, dilation=2))
    assert engine(net) == {}  # weights require grad: left alone
    net.requires_grad_(False)
    found = engine(net)
    assert set(found) == {"0", "4"} and isinstance(found["0"], ImageConv) and isinstance(found["4"], PointwiseConv)
    assert engine(net.double()) == {}  # float32 only


def test_render_with_and_without_the_engine_agree():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
                        nn.Conv2d(16, 8, 1)).eval()
    spec = ModelSpec(net, "pointwise-net", 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    fast = render(spec, channel("4", [0, 3]), steps=8, size=32, param="pixel", transforms=None)
    plain = render(spec, channel("4", [0, 3]), steps=8, size=32, param="pixel", transforms=None, fuse=False)
    torch.testing.assert_close(fast.images, plain.images, rtol=1e-4, atol=1e-4)
    assert bool((fast.values > fast.start_values).all())  # still ascends
    assert type(net[0]) is type(net[2]) is nn.Conv2d and hooks.hook_count(net) == 0  # the model is back as it was


class Branches(nn.Module):
    """An Inception-style block: three branches concatenated along channels."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 4, 1)
        self.b = nn.Sequential(nn.Conv2d(8, 6, 1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1))
        self.c = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x), self.c(x)], 1)


def branchy() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Branches(), nn.ReLU()).eval()


def test_pruning_keeps_the_read_channels_and_drops_the_other_branches():
    from convscope.featvis import channel, layer, neuron
    from convscope.featvis._prune import pruned

    net = branchy().requires_grad_(False)
    probe = torch.rand(1, 3, 16, 16)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        inner = net[1](net[0](x))
        full = net[2](inner)
    only_b = pruned(net, "2", channel("2", [4, 8]).channels("2"), probe)["2"]
    called = {n.target for n in only_b.graph.nodes if n.op == "call_module"}
    assert called == {"b"}  # branches a and c are gone from the graph
    with torch.no_grad():
        got = only_b(inner)
    torch.testing.assert_close(got[:, 4:9], full[:, 4:9])
    assert got.shape == full.shape and bool((got[:, :4] == 0).all()) and bool((got[:, 9:] == 0).all())
    assert pruned(net, "2", layer("2").channels("2"), probe) == {}  # the whole layer is read
    assert pruned(net, "2", (neuron("2", 0) + channel("2", 11)).channels("2"), probe)["2"] is not None
    assert pruned(net, "2", {0, 5, 10}, probe) == {}  # every branch is needed: nothing to gain
    assert pruned(net, "0", {1}, probe) == {}  # a convolution is not a concatenation


def test_render_of_a_pruned_layer_equals_the_plain_render():
    net = branchy()
    spec = ModelSpec(net, "branchy", 3, (16, 16), (0.5,) * 3, (0.25,) * 3)
    fast = render(spec, channel("2", [5, 6]), steps=6, size=16, param="pixel", transforms=None)
    plain = render(spec, channel("2", [5, 6]), steps=6, size=16, param="pixel", transforms=None, fuse=False)
    torch.testing.assert_close(fast.images, plain.images, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast.values, plain.values, rtol=1e-5, atol=1e-5)
    assert fast.recipe.params["pruned_layers"] == ["2"] and plain.recipe.params["pruned_layers"] == []
    assert type(net[2]) is Branches and hooks.hook_count(net) == 0
