"""Properties every attribution method must have: known values on linear models, completeness, batching, targets,
functional ReLUs, and leaving the model and the input exactly as they were."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convscope.attribution as A
from convscope.errors import ConvscopeError, LayerNotFoundError, TargetError, UnitOutOfRangeError
from convscope.hooks import capture, hook_count
from convscope.models import ModelSpec

GRADIENT_METHODS = ["saliency", "deconvnet", "guided", "gradcam", "guided-gradcam", "smoothgrad", "ig"]
FAST = {"smoothgrad": {"samples": 3}, "ig": {"steps": 6}}


class Net(nn.Module):
    """A small CNN with module ReLUs (one reused), BN, pooling and a head."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, classes)

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.bn(self.conv1(x))), 2)
        x = self.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


class FunctionalNet(Net):
    """The same network with functional ReLUs: `F.relu(..., inplace=True)` and `Tensor.relu_`."""

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn(self.conv1(x)), inplace=True), 2)
        x = self.conv2(x).relu_()
        return self.fc(F.adaptive_avg_pool2d(x, 4).flatten(1))


class FunctionalNet2(Net):
    """The same network with `torch.relu` and `Tensor.relu`."""

    def forward(self, x):
        x = F.max_pool2d(torch.relu(self.bn(self.conv1(x))), 2)
        return self.fc(F.adaptive_avg_pool2d(self.conv2(x).relu(), 4).flatten(1))


def net(cls=Net) -> nn.Module:
    torch.manual_seed(0)
    model = cls().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.3, 0.3)
        model.bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def inputs(batch: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)


def run(name: str, model, x, target=None, **options):
    return A.METHODS[name](model, x, target, **{**FAST.get(name, {}), **options})


# ----------------------------------------------------------------------------------------------- known values
def test_saliency_of_a_linear_model_is_its_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.Flatten(), nn.Linear(64, 4)).double()  # linear end to end
    x = inputs(2, 8)
    result = A.saliency(model, x, target=[2, 0])
    conv, fc = model[0], model[2]
    expected = fc.weight.view(4, 1, 8, 8) * conv.weight.view(1, 3, 1, 1)  # d fc_k / d x_c,h,w
    assert torch.allclose(result.attributions, expected[[2, 0]], atol=1e-12)
    assert torch.allclose(result.map, expected[[2, 0]].abs().amax(1))
    assert torch.allclose(result.scores, model(x)[[0, 1], [2, 0]])


def test_integrated_gradients_of_a_linear_model_is_weight_times_difference():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()
    x, baseline = inputs(2, 8), 0.5 * inputs(1, 8)[0]
    result = A.integrated_gradients(model, x, target=1, baseline=baseline, steps=3)
    expected = model[1].weight[1].view(3, 8, 8) * (x - baseline)
    assert torch.allclose(result.attributions, expected, atol=1e-12)


@pytest.mark.parametrize("quadrature", ["gausslegendre", "riemann_trapezoid", "riemann_middle"])
def test_integrated_gradients_completeness(quadrature):
    model, x = net(), inputs()
    baseline = torch.zeros_like(x[0]) + 0.2
    result = A.integrated_gradients(model, x, target=[0, 3, 4], baseline=baseline, steps=256, method=quadrature,
                                    internal_batch_size=200)
    with torch.no_grad():
        gap = model(x)[[0, 1, 2], [0, 3, 4]] - model(baseline.expand_as(x))[:, [0, 3, 4]].diagonal()
    total = result.attributions.flatten(1).sum(1)
    assert torch.all((total - gap).abs() <= 0.01 * gap.abs())
    assert torch.allclose(result.extras["delta"], total - gap, atol=1e-9)
    assert torch.allclose(result.map.flatten(1).sum(1), total)  # the drawn map keeps completeness


def test_smoothgrad_without_noise_is_saliency_and_seeds_repeat():
    model, x = net(), inputs()
    plain = A.saliency(model, x, target=2).attributions
    assert torch.allclose(A.smoothgrad(model, x, target=2, samples=2, noise_level=0.0).attributions, plain)
    a = A.smoothgrad(model, x, target=2, samples=4, seed=3, batch_size=5).attributions
    b = A.smoothgrad(model, x, target=2, samples=4, seed=3).attributions
    c = A.smoothgrad(model, x, target=2, samples=4, seed=4).attributions
    assert torch.allclose(a, b, atol=1e-12) and not torch.allclose(a, c)


def test_guided_gradcam_is_guided_backprop_times_gradcam():
    model, x = net(), inputs()
    combined = A.guided_gradcam(model, x, target=1, layer="conv2")
    guided = A.guided_backprop(model, x, target=1).attributions
    cam = A.gradcam(model, x, target=1, layer="conv2").attributions
    assert torch.allclose(combined.attributions, guided * cam, atol=1e-12)


def test_gradcam_by_hand():
    model, x = net(), inputs()
    result = A.gradcam(model, x, target=4, layer="conv2", upsample="nearest")
    with capture(model, "conv2", detach=False) as cap:
        out = model(x.requires_grad_(False))
    activation = cap["conv2"]
    (grad,) = torch.autograd.grad(out[:, 4].sum(), activation)
    cam = F.relu((grad.mean((2, 3), keepdim=True) * activation).sum(1, keepdim=True))
    assert torch.allclose(result.extras["cam"], cam.detach(), atol=1e-12)
    assert result.map.shape == (3, 16, 16)


# ----------------------------------------------------------------------------------------------- ReLU rules
@pytest.mark.parametrize("functional", [FunctionalNet, FunctionalNet2])
def test_functional_relus_get_the_rules_like_modules(functional):
    module_net, functional_net = net(Net), net(functional)
    x = inputs()
    for name in ("guided", "deconvnet", "guided-gradcam"):
        extra = {"layer": "conv2"} if name == "guided-gradcam" else {}
        a = run(name, module_net, x, 2, **extra).attributions
        b = run(name, functional_net, x, 2, **extra).attributions
        assert torch.allclose(a, b, atol=1e-12), name
    plain = A.saliency(functional_net, x, 2).attributions
    assert not torch.allclose(A.guided_backprop(functional_net, x, 2).attributions, plain)


def test_guided_backprop_by_hand_on_one_relu():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]))
        model[2].weight.copy_(torch.tensor([[2.0, -3.0, 4.0]]))
    x = torch.tensor([[1.0, 1.0, -1.0, 5.0]], dtype=torch.float64).view(1, 4, 1, 1)
    flat = nn.Sequential(nn.Flatten(), model)
    spec = ModelSpec(flat, "toy", channels=4, input_size=(1, 1))
    # units: pre-activations (1, 1, -1); output weights (2, -3, 4)
    assert A.saliency(spec, x, 0).attributions.flatten().tolist() == [2, -3, 0, 0]
    assert A.guided_backprop(spec, x, 0).attributions.flatten().tolist() == [2, 0, 0, 0]
    assert A.deconvnet(spec, x, 0).attributions.flatten().tolist() == [2, 0, 4, 0]


class ClippedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU6()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(F.hardtanh(self.act(self.conv(x)) * 3, 0.0, 2.0).mean((2, 3)))


def test_clipped_relus_follow_the_rectifiers_option():
    torch.manual_seed(0)
    model, x = ClippedNet().double().eval(), inputs(2, 8) * 3
    guided = A.guided_backprop(model, x, 0)
    assert not torch.allclose(guided.attributions, A.saliency(model, x, 0).attributions)
    with pytest.raises(TargetError, match="rectifiers='all'"):
        A.guided_backprop(model, x, 0, rectifiers="relu")
    with pytest.raises(TargetError, match="no ReLU"):
        A.deconvnet(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Tanh(), nn.Flatten()).double(), x, 0)
    assert hook_count(model) == 0


@pytest.mark.parametrize("method", ["guided_backprop", "deconvnet"])
def test_a_target_before_every_relu_is_refused_on_every_call(method):
    """The capture's first pass per input shape runs the whole network (ReLUs after the target included): the
    verdict must not depend on whether the model ran before (it once returned the plain gradient on the first call
    and refused on the second)."""
    x = inputs(1, 12)
    for fresh in (True, False):
        model = net() if fresh else model
        for _ in range(2):
            with pytest.raises(TargetError, match="before every ReLU"):
                getattr(A, method)(model, x, "conv1:1@3,3")
    after = getattr(A, method)(model, x, "conv2:1@2,2")  # conv2 reads conv1's rectified output: allowed
    assert after.attributions.abs().sum() > 0


# ----------------------------------------------------------------------------------------------- batching, targets
@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_batching_does_not_change_results(name):
    model, x = net(), inputs()
    whole = run(name, model, x, [0, 1, 2])
    for b in range(3):
        alone = run(name, model, x[b:b + 1], b)
        assert torch.allclose(whole.attributions[b], alone.attributions[0], atol=1e-10), name
        assert torch.allclose(whole.map[b], alone.map[0], atol=1e-10)


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_predicted_class_target_equals_explicit_argmax(name):
    model, x = net(), inputs()
    predicted = model(x).argmax(1)
    implicit = run(name, model, x)
    explicit = run(name, model, x, predicted.tolist())
    assert torch.equal(implicit.classes, predicted)
    assert torch.allclose(implicit.attributions, explicit.attributions, atol=1e-12)


def test_class_names_callables_and_units():
    model, x = net(), inputs()
    spec = ModelSpec(model, "net", class_names=["ant", "bee", "cat", "dog", "eel"], input_size=(16, 16))
    by_name = A.saliency(spec, x, "cat")
    assert torch.equal(by_name.classes, torch.tensor([2, 2, 2]))
    by_callable = A.saliency(spec, x, lambda out: out[:, 2] * 2.0)
    assert torch.allclose(by_callable.attributions, 2 * by_name.attributions)
    unit = A.saliency(spec, x, "conv2:3")
    xx = x.clone().requires_grad_()
    with capture(model, "conv2", detach=False) as cap:
        model(xx)
    (expected,) = torch.autograd.grad(cap["conv2"][:, 3].mean((1, 2)).sum(), xx)
    assert torch.allclose(unit.attributions, expected, atol=1e-12)
    assert unit.classes is None
    at = A.guided_backprop(spec, x, "conv2:3@1,2")
    assert at.scores.shape == (3,)
    with pytest.raises(TargetError, match="does not depend"):
        A.gradcam(spec, x, "conv1:0", layer="conv2")


@pytest.mark.parametrize("target, error", [(7, TargetError), ("zebra", TargetError), ("conv2:99", UnitOutOfRangeError),
                                           ("nolayer:1", LayerNotFoundError), ([1, 2], TargetError)])
def test_bad_targets_raise_clear_errors_and_leave_no_hook(target, error):
    model, x = net(), inputs()
    spec = ModelSpec(model, "net", class_names=["ant", "bee", "cat", "dog", "eel"], input_size=(16, 16))
    for name in GRADIENT_METHODS:
        with pytest.raises(error):
            run(name, spec, x, target)
        assert hook_count(model) == 0


def test_gradcam_layer_errors():
    model, x = net(), inputs()
    with pytest.raises(TargetError, match=r"\(B, C, H, W\)"):
        A.gradcam(model, x, 0, layer="fc")
    with pytest.raises(LayerNotFoundError, match="conv2"):
        A.gradcam(model, x, 0, layer="conv3")
    assert A.gradcam(model, x, 0, layer=model.conv1).recipe.params["layer"] == "conv1"
    assert A.default_layer(model, x) == "relu#1"  # the last call with a spatial output (8 x 8)
    assert A.gradcam(model, x, 0, layer="relu#0").map.shape == (3, 16, 16)


# ----------------------------------------------------------------------------------------------- leaving things be
def _state(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            {n: m.training for n, m in model.named_modules()},
            {n: p.requires_grad for n, p in model.named_parameters()},
            {n: p.grad for n, p in model.named_parameters()})


def _same(model: nn.Module, before) -> bool:
    after = _state(model)
    return (all(torch.equal(before[0][k], after[0][k]) for k in before[0]) and before[1:3] == after[1:3]
            and all(after[3][k] is None for k in after[3]) and hook_count(model) == 0)


class Exploding(Net):
    def forward(self, x):
        x = self.relu(self.conv1(x))
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", GRADIENT_METHODS)
def test_model_and_input_untouched_after_success_and_error(name):
    model, x = net(), inputs()
    model.train()
    model.bn.eval()
    model.conv1.weight.requires_grad_(False)
    before = _state(model)
    x.requires_grad_(True)
    sentinel = torch.full_like(x, 7.0)
    x.grad = sentinel
    x_before = x.detach().clone()
    run(name, model, x, 1)
    assert _same(model, before) and x.grad is sentinel and torch.equal(x.detach(), x_before) and x.requires_grad
    with pytest.raises(TargetError):
        run(name, model, x, 99)
    assert _same(model, before)
    broken = Exploding().double()
    broken_before = _state(broken)
    with pytest.raises((RuntimeError, ConvscopeError)):
        run(name, broken, x, 0, **({"layer": "conv1"} if "gradcam" in name else {}))
    assert _same(broken, broken_before)
    assert torch._C._len_torch_function_stack() == 0  # the ReLU-rule mode is gone too
    assert x.grad is sentinel and torch.equal(x.grad, torch.full_like(x, 7.0))


@pytest.mark.parametrize("layer", ["conv2", "relu#0"])
def test_capture_leaves_start_the_graph_at_the_requested_call_only(layer):
    """hooks.capture(leaves=...) (used by Grad-CAM): the same layer gradient as a full graph, with nothing upstream
    requiring grad; for a module called twice only the requested call becomes a leaf."""
    from convscope.hooks import frozen

    model, x = net(), inputs()
    with capture(model, layer, detach=False) as cap:
        out = model(x.clone().requires_grad_())
    (full,) = torch.autograd.grad(out[:, 1].sum(), cap[layer])
    with frozen(model), capture(model, layer, leaves=[layer]) as cap:
        out = model(x)
    (leaf,) = torch.autograd.grad(out[:, 1].sum(), cap[layer])
    assert cap[layer].is_leaf and torch.allclose(full, leaf, atol=1e-12)
    assert hook_count(model) == 0
