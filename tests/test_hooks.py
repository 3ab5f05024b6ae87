"""hooks.py: every context leaves the model exactly as found, whatever happens inside, and captures what the model
really computed (in-place ReLUs, reused modules, early stop)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from convscope.errors import AmbiguousLayerError, LayerNotFoundError, UnitOutOfRangeError
from convscope.hooks import capture, frozen, hook_count, record_calls, swap_modules
from convscope.layers import check_unit, parse_unit


class Tiny(nn.Module):
    """conv -> in-place ReLU -> conv -> in-place ReLU (the same ReLU module twice) -> pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 5, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        x = self.relu(self.conv2(x))
        return self.fc(self.pool(x).flatten(1))


class Exploding(Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv1(x)))
        raise RuntimeError("boom mid-forward")


def _state(model: nn.Module) -> dict:
    return {
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "params": {name: p.detach().clone() for name, p in model.state_dict().items()},
        "modules": {name: id(m) for name, m in model.named_modules()},
    }


def _assert_same(model: nn.Module, before: dict) -> None:
    after = _state(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["modules"] == before["modules"]
    for name, value in before["params"].items():
        assert torch.equal(after["params"][name], value), name
    assert hook_count(model) == 0


def _odd_model() -> Tiny:
    """A model in a deliberately mixed state: some modules training, some frozen parameters."""
    model = Tiny().double()
    model.train()
    model.conv2.eval()
    model.conv1.weight.requires_grad_(False)
    return model


def _reference(x: torch.Tensor, model: Tiny) -> dict[str, torch.Tensor]:
    """Layer outputs computed by hand, without hooks (eval-mode BN), for comparison."""
    with torch.no_grad():
        a = model.conv1(x)
        b = torch.relu(model.bn(a))
        c = model.conv2(b)
        d = torch.relu(c)
    return {"conv1": a, "relu#0": b, "conv2": c, "relu#1": d}


def test_frozen_yields_a_frozen_copy_and_never_changes_the_model():
    model = _odd_model()
    before = _state(model)
    with frozen(model) as net:
        assert net is not model and type(net) is type(model)
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
        _assert_same(model, before)  # during the call, not only after it
        for mine, theirs in zip(net.parameters(), model.parameters()):
            assert mine.data_ptr() == theirs.data_ptr()  # shared storage: no memory copied
        with capture(net, ["conv1"]):
            assert hook_count(net) > 0 and hook_count(model) == 0
    _assert_same(model, before)


def test_frozen_copies_keep_the_users_hooks_tied_modules_and_fresh_weights():
    model = Tiny().double().eval()
    model.extra = model.conv1  # the same module at two paths
    seen = []
    handle = model.conv2.register_forward_hook(lambda *_: seen.append(1))
    x = torch.randn(1, 3, 6, 6, dtype=torch.float64)
    try:
        with frozen(model) as net:
            assert net.extra is net.conv1 and net.conv1 is not model.conv1
            net(x)
            assert seen == [1]  # the user's own hook still runs on the copy
        with torch.no_grad():
            model.fc.bias.add_(1.0)  # in place: the copy sees it at once
        with frozen(model) as net:
            torch.testing.assert_close(net(x), model(x))
        model.fc = nn.Linear(5, 3).double()  # a new module: the next copy has it
        with frozen(model) as net:
            torch.testing.assert_close(net(x), model(x))
        with frozen(model) as a, frozen(model) as b:
            assert a is not b  # concurrent calls get their own copies
    finally:
        handle.remove()
    assert hook_count(model) == 0


def test_nothing_survives_success_bad_target_or_exploding_forward():
    model = _odd_model()
    before = _state(model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with frozen(model) as net, capture(net, ["conv1", "relu#1"], gradients=True) as cap:
        net(x).sum().backward()
        assert cap["conv1"].shape == (2, 4, 8, 8)
    _assert_same(model, before)

    with pytest.raises(LayerNotFoundError, match="conv1"):  # unknown layer: suggestions name the real ones
        with capture(model, ["conv_1"]):
            pass
    _assert_same(model, before)

    with pytest.raises(UnitOutOfRangeError, match=r"0\.\.3"):  # out-of-range unit, raised inside the block
        with frozen(model) as net, capture(net, "conv1") as cap:
            cap.run(x)
            check_unit(parse_unit("conv1:4"), cap["conv1"].shape)
    _assert_same(model, before)

    exploding = Exploding().double()
    exploding.train()
    exploding.bn.eval()
    state = _state(exploding)
    with pytest.raises(RuntimeError, match="boom"):
        with frozen(exploding) as net, capture(net, ["conv1", "bn"], gradients=True, detach=False):
            net(x)
    _assert_same(exploding, state)
    with pytest.raises(RuntimeError, match="boom"), record_calls(exploding):
        exploding(x)
    assert hook_count(exploding) == 0


def test_outputs_identical_before_during_after():
    model = _odd_model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with frozen(model) as net:
        plain = net(x)
    with frozen(model) as net, capture(net, ["conv1", "relu#0", "relu#1"], detach=False) as cap:
        during = net(x)
    with frozen(model) as net:
        after = net(x)
    assert torch.equal(plain, during) and torch.equal(plain, after)
    assert hook_count(model) == 0 and cap["conv1"] is not None


@pytest.mark.parametrize("detach", [True, False])
def test_inplace_relu_does_not_corrupt_captured_activations(detach):
    model = Tiny().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    expected = _reference(x, model)
    with capture(model, ["conv1", "conv2", "relu#0", "relu#1"], detach=detach) as cap:
        model(x)
    for name in ("conv1", "conv2", "relu#0", "relu#1"):
        torch.testing.assert_close(cap[name], expected[name], rtol=0, atol=0)
    assert (cap["conv2"] < 0).any(), "conv2 must keep its negative values although an in-place ReLU follows"
    assert hook_count(model) == 0


def test_captured_gradients_equal_autograd():
    model = Tiny().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    with frozen(model) as net, capture(net, ["conv1", "conv2"], gradients=True) as cap:
        out = net(x)
        out[:, 1].sum().backward()
        grads = cap.gradients
    # independent: differentiate the hand-written forward with respect to the same intermediate tensors
    with frozen(model) as net:
        a = net.conv1(x).detach().requires_grad_(True)
        c = net.conv2(torch.relu(net.bn(a)))
        score = net.fc(net.pool(torch.relu(c)).flatten(1))[:, 1].sum()
        grad_a, grad_c = torch.autograd.grad(score, [a, c])
    torch.testing.assert_close(grads["conv1"], grad_a)
    torch.testing.assert_close(grads["conv2"], grad_c)
    assert hook_count(model) == 0


def test_stop_gives_the_same_activations_as_a_full_pass():
    model = Tiny().double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    with capture(model, ["conv1", "relu#0"]) as cap:
        model(x)
        full = {k: v.clone() for k, v in cap.activations.items()}
    calls = []
    handle = model.fc.register_forward_hook(lambda *_: calls.append(1))  # a probe of our own, removed below
    try:
        for _ in range(2):  # the first pass per shape runs fully; the second stops
            with capture(model, ["conv1", "relu#0"], stop=True) as cap:
                result = cap.run(x)
                stopped = {k: v.clone() for k, v in cap.activations.items()}
        assert result is None and len(calls) == 1, "the second stop=True pass must end before fc"
    finally:
        handle.remove()
    for name in full:
        torch.testing.assert_close(stopped[name], full[name], rtol=0, atol=0)
    assert hook_count(model) == 0


def test_call_index_on_resnet18_reused_relu():
    model = torchvision.models.resnet18().eval()
    x = torch.randn(1, 3, 32, 32)
    block = model.layer1[0]
    with torch.no_grad():  # the block's forward written out by hand
        inp = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        first = torch.relu(block.bn1(block.conv1(inp)))
        second = torch.relu(block.bn2(block.conv2(first)) + inp)
    with torch.no_grad(), capture(model, ["layer1.0.relu#0", "layer1.0.relu#1"]) as cap:
        model(x)
    torch.testing.assert_close(cap["layer1.0.relu#0"], first)
    torch.testing.assert_close(cap["layer1.0.relu#1"], second)
    with pytest.raises(AmbiguousLayerError, match=r"layer1\.0\.relu#1"):
        with torch.no_grad(), capture(model, "layer1.0.relu") as cap:
            model(x)
            cap["layer1.0.relu"]
    with pytest.raises(LayerNotFoundError, match="#0..#1"):
        with torch.no_grad(), capture(model, "layer1.0.relu#2") as cap:
            model(x)
            cap["layer1.0.relu#2"]
    assert hook_count(model) == 0


def test_swap_modules_restores_on_error():
    model = Tiny()
    original_relu, original_pool = model.relu, model.pool
    with pytest.raises(LayerNotFoundError):
        with swap_modules(model, {"relu": nn.Identity(), "pol": nn.Identity()}):
            pass
    assert model.relu is original_relu and model.pool is original_pool
    with pytest.raises(RuntimeError, match="inside"):
        with swap_modules(model, {"relu": nn.Tanh(), "pool": nn.AdaptiveMaxPool2d(1)}):
            assert isinstance(model.relu, nn.Tanh)
            raise RuntimeError("inside")
    assert model.relu is original_relu and model.pool is original_pool


def test_record_calls_lists_each_call_in_order():
    model = Tiny().eval()
    with torch.no_grad(), record_calls(model) as log:
        model(torch.randn(1, 3, 6, 6))
    names = [name for name, _ in log]
    assert names == ["conv1", "bn", "relu", "conv2", "relu", "pool", "fc"]
    assert dict(log)["fc"] == (1, 3)
    assert hook_count(model) == 0
