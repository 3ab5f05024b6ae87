"""The render loop's max-pools (`featvis._pools`): reused memory and a rectifier's backward done on the pooled
tensor, with the same values and input gradients as the model as written."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope import hooks
from convscope.attribution._rules import RectifierRules
from convscope.featvis import channel, render
from convscope.featvis._pools import _Scratch, fast_pools
from convscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvReLU(nn.Module):
    """torchvision's BasicConv2d shape: the ReLU is a function call inside the block, in place."""

    def __init__(self, c_in: int, c_out: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, **kwargs)

    def forward(self, x):
        return F.relu(self.conv(x), inplace=True)


class Shared(nn.Module):
    """A rectifier output read by a pool and by another branch: its gradient is the sum of both."""

    def __init__(self):
        super().__init__()
        self.block = ConvReLU(3, 6, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Conv2d(6, 4, 1)
        self.out = nn.Identity()

    def forward(self, x):
        r = self.block(x)
        return self.out(self.head(self.pool(r)) + F.avg_pool2d(r, 2).mean(1, keepdim=True))


def functional_stem() -> nn.Module:
    return nn.Sequential(ConvReLU(3, 8, kernel_size=5, stride=2, padding=2), nn.MaxPool2d(3, 2, ceil_mode=True),
                         ConvReLU(8, 12, kernel_size=3, padding=1), nn.MaxPool2d(3, 1, 1), nn.Conv2d(12, 5, 1))


def module_rectifiers() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(8, 8, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 5, 1))


MODELS = {"functional": (functional_stem, "4", {"0", "2"}), "modules": (module_rectifiers, "6", {"1", "4"}),
          "shared": (Shared, "out", {"block"})}


def input_gradient(net: nn.Module, layer: str, x: torch.Tensor, weights: torch.Tensor) -> tuple:
    x = x.detach().clone().requires_grad_(True)
    with hooks.capture(net, [layer], detach=False) as cap:
        net(x)
        value = cap.activations[layer]
    (grad,) = torch.autograd.grad((value * weights).sum(), x)
    return value.detach(), grad


@pytest.mark.parametrize("name", sorted(MODELS))
def test_values_and_input_gradients_equal_the_model_as_written(name):
    make, layer, rectifier_blocks = MODELS[name]
    torch.manual_seed(0)
    net = make().eval().requires_grad_(False)
    modules = list(net.modules())
    fast = fast_pools(net, [layer], torch.rand(1, 3, 24, 24))
    pools = {path for path, m in net.named_modules() if isinstance(m, nn.MaxPool2d)}
    assert set(fast) == pools | rectifier_blocks
    x = torch.rand(3, 3, 24, 24)
    weights = torch.randn_like(input_gradient(net, layer, x, 1.0)[0])
    expected = input_gradient(net, layer, x, weights)
    with hooks.swap_modules(net, fast):
        for _ in range(3):  # the reused memory gives the same numbers step after step
            got = input_gradient(net, layer, x, weights)
            assert torch.equal(got[0], expected[0])
            torch.testing.assert_close(got[1], expected[1], rtol=1e-6, atol=1e-7)
    assert list(net.modules()) == modules and hooks.hook_count(net) == 0  # the model is back as it was


def test_a_gradient_kept_by_a_hook_is_not_overwritten_by_the_next_step():
    torch.manual_seed(0)
    net = functional_stem().eval().requires_grad_(False)
    fast = fast_pools(net, ["4"], torch.rand(1, 3, 24, 24))
    kept = []
    with hooks.swap_modules(net, fast):
        handle = net[1].register_full_backward_hook(lambda module, grad_in, grad_out: kept.append(grad_in[0]))
        try:
            first = input_gradient(net, "4", torch.rand(2, 3, 24, 24), 1.0)
            snapshot = kept[0].clone()
            input_gradient(net, "4", torch.rand(2, 3, 24, 24), 1.0)
        finally:
            handle.remove()
    assert first[1].abs().sum() > 0 and len(kept) == 2
    assert torch.equal(kept[0], snapshot)  # step 2 wrote its pool gradient elsewhere
    assert kept[1].data_ptr() != kept[0].data_ptr()


def test_scratch_memory_is_reused_only_while_nobody_else_holds_it():
    scratch, like = _Scratch(), torch.empty(2, 3, 4, 4)
    first = scratch.take("grad", like, lambda: torch.empty_like(like))
    address = first.data_ptr()
    del first
    second = scratch.take("grad", like, lambda: torch.empty_like(like))
    assert second.data_ptr() == address  # nobody held it: the same memory again
    third = scratch.take("grad", like, lambda: torch.empty_like(like))
    assert third.data_ptr() != second.data_ptr()  # `second` is still held here: fresh memory
    assert scratch.take("grad", torch.empty(1, 3, 4, 4), lambda: torch.empty(1, 3, 4, 4)).shape[0] == 1


def test_guided_backprop_through_the_fast_pools_is_unchanged():
    torch.manual_seed(0)
    net = functional_stem().eval().requires_grad_(False)
    fast = fast_pools(net, ["4"], torch.rand(1, 3, 24, 24))
    x = torch.rand(2, 3, 24, 24)
    with hooks.function_mode(RectifierRules("guided")):
        expected = input_gradient(net, "4", x, 1.0)[1]
    with hooks.swap_modules(net, fast), hooks.function_mode(RectifierRules("guided")):
        got = input_gradient(net, "4", x, 1.0)[1]
    plain = input_gradient(net, "4", x, 1.0)[1]
    assert not torch.allclose(expected, plain)  # the rule matters here, so equality below means something
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def test_nothing_to_replace_without_max_pools_or_for_pools_that_return_indices():
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 2, 1)).eval()
    assert fast_pools(plain, ["3"], torch.rand(1, 3, 16, 16)) == {}
    indexed = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, return_indices=True)).eval()
    assert fast_pools(indexed, ["1"], torch.rand(1, 3, 16, 16)) == {}


def test_render_with_the_fast_pools_equals_the_render_without(monkeypatch):
    torch.manual_seed(0)
    net = functional_stem().eval()
    spec = ModelSpec(net, "stem", 3, (32, 32), (0.5,) * 3, (0.25,) * 3)
    kwargs = dict(steps=6, size=32, param="pixel", transforms=None, seed=3)
    fast = render(spec, channel("4", [0, 2]), **kwargs)
    import sys

    monkeypatch.setattr(sys.modules["convscope.featvis.render"], "fast_pools", lambda *args: {})
    slow = render(spec, channel("4", [0, 2]), **kwargs)
    assert fast.recipe.params["rectifiers_masked_by_pools"] == ["0", "2"]
    assert slow.recipe.params["rectifiers_masked_by_pools"] == []
    torch.testing.assert_close(fast.images, slow.images, rtol=1e-6, atol=1e-6)
    assert bool((fast.values > fast.start_values).all())
    assert type(net[1]) is nn.MaxPool2d and type(net[0]) is ConvReLU and hooks.hook_count(net) == 0


class Raises(nn.Module):
    def forward(self, x):
        raise RuntimeError("mid-forward")


def test_no_hook_or_replacement_survives_a_model_that_raises_mid_forward():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), Raises(), nn.Conv2d(4, 2, 1)).eval()
    modules = list(net.modules())
    with pytest.raises(RuntimeError, match="mid-forward"):
        fast_pools(net, ["4"], torch.rand(1, 3, 16, 16))
    assert hooks.hook_count(net) == 0 and list(net.modules()) == modules
    assert torch._C._len_torch_function_stack() == 0  # no mode left active either


def test_only_the_pools_on_the_way_to_the_layers_are_replaced():
    torch.manual_seed(0)
    net = functional_stem().eval().requires_grad_(False)
    assert set(fast_pools(net, ["1"], torch.rand(1, 3, 24, 24))) == {"0", "1"}  # not "2" and "3" after it
    assert set(fast_pools(net, [], torch.rand(1, 3, 24, 24))) == {"0", "1", "2", "3"}  # the whole model


def test_a_device_without_the_pool_kernels_falls_back_to_the_plain_pools(monkeypatch):
    import convscope.featvis._pools as pools

    def unsupported(*args, **kwargs):
        raise NotImplementedError("max_pool2d_with_indices.out is not implemented for this device")

    monkeypatch.setattr(pools._Pool, "forward", staticmethod(unsupported))
    net = functional_stem().eval().requires_grad_(False)
    modules = list(net.modules())
    assert fast_pools(net, ["4"], torch.rand(1, 3, 24, 24)) == {}
    assert list(net.modules()) == modules and hooks.hook_count(net) == 0
