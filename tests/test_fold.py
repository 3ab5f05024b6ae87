"""BatchNorm folding (`convscope.accel.fold`): same maps as the model as written, a model left alone, no stale copies."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import convscope.attribution as A
from convscope import accel, hooks
from convscope.accel.fold import _CACHE, folded

pytestmark = pytest.mark.usefixtures("one_thread")


def bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def test_gradcam_with_folding_equals_the_model_as_written_and_leaves_it_alone():
    net = bn_net()
    x = torch.randn(3, 3, 12, 12)
    before = copy.deepcopy(net.state_dict())
    modules = list(net.modules())
    with hooks.frozen(net) as work, folded(work, x[:1], ["5"]) as pairs:
        assert pairs == 2 and isinstance(work[1], nn.Identity)  # the folding is really in effect, on the copy
        assert isinstance(net[1], nn.BatchNorm2d)
    fast = A.gradcam(net, x, 1, layer="5")
    with A.no_folding():
        exact = A.gradcam(net, x, 1, layer="5")
    torch.testing.assert_close(fast.attributions, exact.attributions, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.scores, exact.scores, rtol=1e-5, atol=1e-6)
    assert list(net.modules()) == modules and hooks.hook_count(net) == 0
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_layer_inside_a_pair_is_not_folded_away():
    net = bn_net()
    x = torch.randn(2, 3, 12, 12)
    with hooks.frozen(net) as work, folded(work, x[:1], ["3"]) as pairs:  # the second conv's own output is asked for
        assert pairs == 1 and isinstance(work[3], nn.Conv2d) and isinstance(work[4], nn.BatchNorm2d)
    fast = A.gradcam(net, x, 0, layer="3")
    with A.no_folding():
        exact = A.gradcam(net, x, 0, layer="3")
    torch.testing.assert_close(fast.attributions, exact.attributions, rtol=1e-5, atol=1e-6)


def test_changed_weights_are_never_served_from_stale_copies():
    net = bn_net()
    x = torch.randn(2, 3, 12, 12)
    first = A.gradcam(net, x, 2, layer="5")
    with torch.no_grad():
        net[1].running_var.mul_(4.0)  # in place: same storage, new version
        net[3].weight.neg_()
    again = A.gradcam(net, x, 2, layer="5")
    with A.no_folding():
        exact = A.gradcam(net, x, 2, layer="5")
    assert not torch.allclose(again.attributions, first.attributions)
    torch.testing.assert_close(again.attributions, exact.attributions, rtol=1e-5, atol=1e-6)


def test_fused_copies_are_shared_across_layers_and_reused():
    net = bn_net()
    x = torch.randn(2, 3, 12, 12)
    A.gradcam(net, x, 0, layer="5")
    A.gradcam(net, x, 0, layer="2")
    with hooks.frozen(net) as work:  # the pooled working copy the calls used
        _, by_key, made = _CACHE[work]
    assert len(by_key) == 2 and set(made) == {"0", "3"}  # two layer sets, one fused copy per conv
    assert by_key[(("2",), (3, 12, 12), False)]["0"] is made["0"]


def test_plain_blocks_fold_nothing():
    net = bn_net().train()
    x = torch.randn(2, 3, 12, 12)
    with hooks.frozen(net) as work, accel.plain(), folded(work, x[:1]) as pairs:
        assert pairs == 0 and isinstance(work[1], nn.BatchNorm2d)
    assert net.training  # frozen never touched the user's flags
    assert A.no_folding is accel.plain  # one switch for attribution and feature visualization
