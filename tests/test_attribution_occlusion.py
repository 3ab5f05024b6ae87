"""Occlusion equals Captum's `Occlusion` (test-only oracle), and the incremental engine equals the plain path.

Captum's definition: each pixel gets the mean of f(x) - f(occluded) over the windows covering it, windows of
(C, w, w) at strides (C, s, s). Difference measure against Captum: max |ours - captum| / max |captum| < 1e-4.
The engine is compared with the plain batched path (every occluded image through the unchanged model) on window /
stride combinations that do not divide the image, so windows are cut at the borders.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from captum.attr import Occlusion
from scipy.stats import spearmanr
from torch import nn

import convscope.attribution as A
from convscope.attribution.occlusion import occlusion
from convscope.errors import OptionError
from convscope.hooks import hook_count

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

TOL = 1e-4


class SmallCNN(nn.Module):
    """Every kind of step the engine knows: padded/dilated/grouped convs, BN, max and average pooling with padding,
    a residual add, clipped and smooth activations, arithmetic with a constant, a squeeze-excite gate (full op)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, stride=2, padding=2), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=2, dilation=2)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.act = nn.Hardswish()
        self.avg = nn.AvgPool2d(3, stride=1, padding=1)
        self.c = nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(12)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(12, 12, 1), nn.Sigmoid())
        self.head = nn.Linear(12, classes)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = x + self.b(torch.relu(self.a(x)))
        x = self.avg(self.act(x)) * 0.5 - 0.1
        x = nn.functional.relu6(self.bn(self.c(x)))
        x = x * self.gate(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _lively(model: nn.Module) -> nn.Module:
    """Batch-norm statistics measured on random inputs (so signals neither die nor saturate through a deep random
    network) and random affine parameters, so eval-mode BN is not the identity and outputs depend on the input."""
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average
            m.weight.uniform_(0.8, 1.6)
            m.bias.uniform_(-0.2, 0.2)
        model.train()(torch.randn(16, 3, 64, 64, dtype=dtype))
        for m in bns:
            m.momentum = 0.1
        # logits of spread ~2: neither all classes equally likely nor a saturated softmax
        head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        head.weight.normal_(0, 1)
        logits = model.eval()(torch.randn(4, 3, 64, 64, dtype=dtype))
        head.weight.mul_(2 / logits.std())
    return model


def _models() -> dict[str, nn.Module]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        return {"small": _lively(SmallCNN().double()),
                "resnet18": _lively(torchvision.models.resnet18(num_classes=10)),
                "mobilenet_v2": _lively(torchvision.models.mobilenet_v2(num_classes=10))}
    finally:
        torch.set_num_threads(threads)


MODELS = _models()


def _inputs(name: str, batch: int = 2, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    return x.double() if name == "small" else x


def _relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return float((ours - theirs).abs().max() / theirs.abs().max())


@pytest.mark.parametrize("name", list(MODELS))
def test_probability_maps_equal_captum(name):
    model, x = MODELS[name], _inputs(name)
    target = [1, 3]
    ours = occlusion(model, x, target, window=16, stride=8, baseline=0.0, score="probability")
    assert ours.recipe.params["engine"] == "incremental"
    captum = Occlusion(lambda z: torch.softmax(model(z), 1)).attribute(
        x, target=target, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=0.0,
        perturbations_per_eval=16)
    assert captum.abs().max() > 0
    assert _relative(ours.attributions, captum) < TOL
    assert ours.extras["grid"].shape == (2, 7, 7)
    assert torch.equal(ours.map, ours.attributions[:, 0])
    assert hook_count(model) == 0


def test_the_default_score_is_the_logit_like_captum_and_every_other_method():
    """Issue 10: occlusion scored the softmax probability while every other method explains the logit."""
    model, x = MODELS["small"], _inputs("small", batch=1, size=32)
    ours = occlusion(model, x, 2, window=8, stride=4)
    captum = Occlusion(model).attribute(x, target=2, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4),
                                        baselines=0.0, perturbations_per_eval=32)
    assert ours.recipe.params["score"] == "logit"
    assert _relative(ours.attributions, captum) < TOL
    assert torch.allclose(ours.scores, A.saliency(model, x, 2).scores)  # the same score the gradient methods explain
    probability = occlusion(model, x, 2, window=8, stride=4, score="probability")
    assert _relative(probability.attributions, captum) > 1e-2


@pytest.mark.parametrize("name", ["small", "resnet18"])
def test_logit_map_with_cut_windows_equals_captum(name):
    model, x = MODELS[name], _inputs(name, batch=1, size=50)
    ours = occlusion(model, x, 2, window=(11, 7), stride=(6, 4), baseline=0.3, score="logit")
    captum = Occlusion(model).attribute(x, target=2, sliding_window_shapes=(3, 11, 7), strides=(3, 6, 4),
                                        baselines=0.3, perturbations_per_eval=32)
    assert _relative(ours.attributions, captum) < TOL
    assert ours.extras["grid"].shape == (1, 8, 12)  # ceil((50-11)/6)+1, ceil((50-7)/4)+1


@pytest.mark.parametrize("unit", ["layer2.0.conv1:3", "layer2.1:5", "layer3.0.bn2:7"])
def test_unit_drop_equals_captum(unit):
    model, x = MODELS["resnet18"], _inputs("resnet18", batch=1)
    layer, channel = unit.split(":")
    activation = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: activation.__setitem__("a", o.clone()))  # later in-place ops

    def unit_mean(z):
        model(z)
        return activation["a"][:, int(channel)].mean((1, 2))

    try:
        captum = Occlusion(unit_mean).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8),
                                                baselines=0.0, perturbations_per_eval=49)
    finally:
        handle.remove()
    ours = occlusion(model, x, unit=unit, window=16, stride=8)
    assert ours.recipe.params["engine"] == "incremental"
    assert _relative(ours.attributions, captum) < TOL
    assert hook_count(model) == 0


CASES = [(16, 8), (7, 5), (13, 13), (5, 9), (64, 64), ((9, 20), (3, 11))]


@pytest.mark.parametrize("name", list(MODELS))
def test_engine_equals_plain_path(name):
    model = MODELS[name]
    x = _inputs(name, batch=1, size=64 if name != "small" else 45)
    for window, stride in CASES:
        if name == "small" and window == 64:
            window = 45
        inc = occlusion(model, x, 0, window=window, stride=stride, score="logit", batch_size=7)
        plain = occlusion(model, x, 0, window=window, stride=stride, score="logit", incremental=False)
        assert inc.recipe.params["engine"] == "incremental" and plain.recipe.params["engine"] == "plain"
        scale = plain.extras["grid"].abs().max()
        assert scale > 0
        tol = 1e-10 if name == "small" else 1e-4
        assert (inc.extras["grid"] - plain.extras["grid"]).abs().max() <= tol * max(1.0, float(scale)), (window, stride)
        assert torch.allclose(inc.scores, plain.scores, rtol=1e-5, atol=1e-4)


def test_positional_unit_is_untouched_outside_its_receptive_field():
    """A unit at one position only sees its receptive field: every window outside it drops by exactly 0."""
    model, x = MODELS["resnet18"], _inputs("resnet18", batch=1)
    ours = occlusion(model, x, unit="layer1.0.conv2:4@3,3", window=8, stride=8)
    plain = occlusion(model, x, unit="layer1.0.conv2:4@3,3", window=8, stride=8, incremental=False)
    grid = ours.extras["grid"][0]
    # layer1.0.conv2 (stride 4) at (3, 3) sees input pixels [-9, 34): windows with corners 0..32 (rows/cols 0..4)
    assert grid[5:].abs().max() == 0 and grid[:, 5:].abs().max() == 0
    assert grid[:4, :4].abs().max() > 0
    assert (grid - plain.extras["grid"][0]).abs().max() < 1e-4


@pytest.mark.parametrize("incremental", [True, False])
def test_bf16_is_opt_in_recorded_and_close_to_float32(incremental):
    """bf16 really runs (the map differs from float32's) and stays close: same ranking of the windows, max
    difference a few percent of the map's range on this random network (real numbers: bench/attribution.py)."""
    model, x = copy.deepcopy(MODELS["small"]).float(), _inputs("resnet18", batch=1, size=48)
    exact = occlusion(model, x, 1, window=8, stride=5, incremental=incremental)
    fast = occlusion(model, x, 1, window=8, stride=5, incremental=incremental, precision="bf16")
    assert exact.recipe.params["precision"] == "float32" and fast.recipe.params["precision"] == "bf16"
    assert fast.map.dtype == torch.float32 and fast.scores.dtype == torch.float32
    grid, low = exact.extras["grid"].flatten(), fast.extras["grid"].flatten()
    assert not torch.equal(grid, low)
    assert (grid - low).abs().max() < 0.1 * grid.abs().max()
    assert spearmanr(grid.numpy(), low.numpy()).statistic > 0.9
    assert hook_count(model) == 0


def test_bf16_refuses_a_float64_model_and_unknown_precisions():
    model, x = MODELS["small"], _inputs("small", batch=1, size=32)
    with pytest.raises(OptionError, match="float32 model"):
        occlusion(model, x, 0, window=8, precision="bf16")
    with pytest.raises(OptionError, match="fp16"):
        occlusion(model, x, 0, window=8, precision="fp16")
    assert hook_count(model) == 0


def test_auto_precision_times_the_network_as_everywhere(monkeypatch):
    """"auto" is main's two-stage rule: a device that qualifies is not enough; a pass below `AUTO_MIN_WORK`
    multiply-accumulates stays float32, and a big enough one is timed (here every speedup counts, so bf16)."""
    from convscope import accel
    from convscope.accel import precision as P

    monkeypatch.setitem(P._MEASURED, "cpu", 10.0)  # this device qualifies, whatever the CPU
    x = _inputs("resnet18", batch=1, size=48)
    tiny = copy.deepcopy(MODELS["small"]).float()
    assert occlusion(tiny, x, 1, window=8, stride=5, precision="auto").recipe.params["precision"] == "float32"
    with accel.plain():
        assert occlusion(tiny, x, 1, window=8, stride=5, precision="auto").recipe.params["precision"] == "float32"
    monkeypatch.setattr(P, "AUTO_MIN_WORK", 0)
    monkeypatch.setattr(P, "AUTO_MIN_NETWORK_SPEEDUP", 0.0)
    timed = copy.deepcopy(MODELS["small"]).float()
    params = occlusion(timed, x, 1, window=8, stride=5, precision="auto").recipe.params
    assert params["precision"] == "bf16" and params["precision_asked"] == "auto"
    assert hook_count(timed) == 0
