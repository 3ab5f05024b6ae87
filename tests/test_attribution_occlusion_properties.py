"""Occlusion: the definition on a model whose drops are known by hand, targets, baselines, batching, errors, the
model left as found, the plain fallback, and the incremental engine's geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from convscope.attribution._incremental import IncrementalEngine
from convscope.attribution._incremental_plan import _window_rows
from convscope.attribution.occlusion import occlusion, window_grid
from convscope.errors import InputShapeError, LayerNotFoundError, OptionError, TargetError
from convscope.hooks import hook_count
from convscope.models import spec_for_module

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(c: int = 2, h: int = 6, w: int = 5) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 3)).double().eval()


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).double().eval()


def _by_hand(model: nn.Module, x: torch.Tensor, cls: int, window, stride, baseline: float) -> torch.Tensor:
    """Mean drop of a linear model's logit over the windows covering each pixel, with explicit loops."""
    weight = model[1].weight[cls].view(x.shape[1:])
    _, c, h, w = x.shape
    total, count = torch.zeros(h, w, dtype=x.dtype), torch.zeros(h, w, dtype=x.dtype)
    r = 0
    while True:
        q = 0
        while True:
            rows, cols = slice(r, min(r + window[0], h)), slice(q, min(q + window[1], w))
            drop = (weight[:, rows, cols] * (x[0, :, rows, cols] - baseline)).sum()
            total[rows, cols] += drop
            count[rows, cols] += 1
            if q + window[1] >= w:
                break
            q += stride[1]
        if r + window[0] >= h:
            break
        r += stride[0]
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


@pytest.mark.parametrize("incremental", [True, False])
@pytest.mark.parametrize("window,stride", [((3, 2), (2, 1)), ((2, 2), (3, 3)), ((6, 5), (1, 1))])
def test_linear_model_drops_by_hand(window, stride, incremental):
    model = _linear()
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    spec = spec_for_module(model, channels=2, input_size=(6, 5))  # no conv to read the channel count from
    result = occlusion(spec, x, 1, window=window, stride=stride, baseline=0.25, score="logit",
                       incremental=incremental)
    expected = _by_hand(model, x, 1, window, stride, 0.25)
    assert torch.allclose(result.map[0], expected, atol=1e-12)
    assert torch.allclose(result.attributions[0], expected.expand(2, -1, -1), atol=1e-12)


def test_window_grid_covers_like_captum():
    windows, n_rows, n_cols = window_grid((10, 8), (4, 3), (3, 2))
    assert (n_rows, n_cols) == (3, 4)  # ceil((10-4)/3)+1, ceil((8-3)/2)+1
    assert windows[0].tolist() == [0, 4, 0, 3] and windows[-1].tolist() == [6, 10, 6, 8]  # last cut at the border


def test_targets_agree():
    model = _small()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    predicted = model(x).argmax(1)
    a = occlusion(model, x, None, window=4, stride=4)
    b = occlusion(model, x, predicted.tolist(), window=4, stride=4)
    assert torch.equal(a.classes, predicted)
    assert torch.allclose(a.attributions, b.attributions, atol=1e-12)
    # drops are linear in the score: a difference of logits maps to the difference of the logit maps
    diff = occlusion(model, x, lambda out: out[:, 1] - out[:, 0], window=4, stride=4)
    one = occlusion(model, x, 1, window=4, stride=4, score="logit")
    zero = occlusion(model, x, 0, window=4, stride=4, score="logit")
    assert torch.allclose(diff.attributions, one.attributions - zero.attributions, atol=1e-10)
    assert diff.classes is None
    unit = occlusion(model, x, "4:2", window=4, stride=4)
    same = occlusion(model, x, unit="4:2", window=4, stride=4)
    assert torch.equal(unit.attributions, same.attributions)
    assert unit.attributions.abs().max() > 0


def test_batch_equals_one_by_one_and_keeps_no_graph():
    model = _small()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    together = occlusion(model, x, [0, 1, 2], window=5, stride=3, batch_size=4)
    for i in range(3):
        alone = occlusion(model, x[i:i + 1], i, window=5, stride=3, batch_size=100)
        assert torch.allclose(together.attributions[i], alone.attributions[0], atol=1e-12)
        assert torch.allclose(together.extras["grid"][i], alone.extras["grid"][0], atol=1e-12)
    assert not together.attributions.requires_grad and together.attributions.grad_fn is None
    for tensor in (together.attributions, together.map, together.scores, together.extras["grid"]):
        assert not tensor.is_inference()  # usable in autograd code afterwards


def test_baselines():
    model = _small()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mean = occlusion(model, x, 0, window=4, stride=4, baseline="mean")
    given = occlusion(model, x, 0, window=4, stride=4, baseline=x.mean((2, 3), keepdim=True)[0])
    assert torch.allclose(mean.attributions, given.attributions, atol=1e-12)
    flat = torch.full_like(x, 0.7)  # blurring a constant image changes nothing: occluding with it does nothing
    assert occlusion(model, flat, 0, window=4, stride=4, baseline="blur").attributions.abs().max() < 1e-12
    blur = occlusion(model, x, 0, window=4, stride=4, baseline="blur")
    assert blur.recipe.params["baseline"] == "blur" and blur.attributions.abs().max() > 0
    with pytest.raises(OptionError, match="baseline"):
        occlusion(model, x, 0, baseline="grey")
    with pytest.raises(InputShapeError, match="baseline"):
        occlusion(model, x, 0, window=4, baseline=torch.zeros(2, 16, 16))


def test_model_and_inputs_left_as_found():
    model = _small().train()
    model[4].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, requires_grad=True)
    x_before = x.detach().clone()
    occlusion(model, x, 0, window=4, stride=4)
    assert model.training and all(m.training for m in model.modules())
    assert model[0].weight.requires_grad and not model[4].weight.requires_grad
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(x.detach(), x_before) and x.grad is None
    assert hook_count(model) == 0


def test_bad_options_raise_and_leave_no_hooks():
    model = _small()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    cases = [(dict(window=17), InputShapeError), (dict(window=0), OptionError), (dict(stride=(2, -1)), OptionError),
             (dict(score="prob"), OptionError), (dict(batch_size=0), OptionError),
             (dict(target=9), TargetError), (dict(target=1, unit="4:0"), TargetError),
             (dict(unit="conv9:0"), LayerNotFoundError)]
    for kwargs, error in cases:
        kwargs.setdefault("target", None)
        with pytest.raises(error):
            occlusion(model, x, window=kwargs.pop("window", 4), **kwargs)
        assert hook_count(model) == 0 and not model.training


class Branchy(nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it, so occlusion takes the plain path."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _small()

    def forward(self, x):
        out = self.net(x)
        return out if out.sum() > -1e9 else -out


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1).double()

    def forward(self, x):
        y = self.conv(x)
        y.add_(1.0)
        return y.mean((2, 3))


@pytest.mark.parametrize("model", [Branchy().eval(), InPlace().eval()], ids=["untraceable", "in-place"])
def test_models_the_engine_cannot_run_take_the_plain_path(model):
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    result = occlusion(model, x, 1, window=4, stride=2, score="logit")
    assert result.recipe.params["engine"] == "plain"
    plain = occlusion(model, x, 1, window=4, stride=2, score="logit", incremental=False)
    assert torch.equal(result.attributions, plain.attributions)


def test_unit_on_a_module_called_twice():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    inc = occlusion(model, x, unit="layer1.0.relu#1:3", window=8, stride=4)
    plain = occlusion(model, x, unit="layer1.0.relu#1:3", window=8, stride=4, incremental=False)
    assert inc.recipe.params["engine"] == "incremental"
    assert (inc.attributions - plain.attributions).abs().max() < 1e-4 * plain.attributions.abs().max()


@pytest.mark.parametrize("seed", range(5))
def test_changed_rows_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    for _ in range(50):
        k, s, d = int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 3))
        p = int(rng.integers(0, k))
        size = int(rng.integers(k * d, 40))
        out = (size + 2 * p - d * (k - 1) - 1) // s + 1
        lo = int(rng.integers(0, size))
        hi = int(rng.integers(lo + 1, size + 1))
        hit = [i for i in range(out) if any(lo <= i * s - p + j * d < hi for j in range(k))]
        got = _window_rows(np.array([lo]), np.array([hi]), k, s, p, d, out)
        span = [i for i in range(out) if i * s - p <= hi - 1 and i * s - p + (k - 1) * d >= lo]
        if hit:  # every output that sees a changed input (exactly those without dilation)
            assert got[0][0] <= min(hit) and got[1][0] >= max(hit) + 1
        if span:  # the outputs whose receptive-field span meets the changed rows
            assert (got[0][0], got[1][0]) == (min(span), max(span) + 1)
        else:  # nothing changes: one row is recomputed anyway
            assert got[1][0] - got[0][0] == 1


def test_engine_computes_patches_early_and_whole_maps_late():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=4).eval()
    x = torch.randn(1, 3, 96, 96)
    engine = IncrementalEngine.build(model, x)
    windows, _, _ = window_grid((96, 96), (8, 8), (8, 8))
    plan = engine.plans(engine.clean(x), windows, (8, 8), 16, x.device)[5]
    conv1, late = plan.regions["conv1"], plan.regions["layer4_1_conv2"]
    assert conv1.mode == "patch" and conv1.size[0] * conv1.size[1] < 0.05 * 48 * 48
    assert plan.regions["layer1_1_conv2"].mode == "patch"
    assert late.mode == "full"


class Inceptionish(nn.Module):
    """Branches concatenated along channels (a merge), a flatten through `x.view(x.size(0), -1)` (a shape query)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.one = nn.Conv2d(4, 3, 1)
        self.three = nn.Sequential(nn.Conv2d(4, 3, 3, padding=1), nn.ReLU())
        self.pool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), nn.Conv2d(4, 2, 1))
        self.head = nn.Linear(8 * 4 * 4, 3)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.cat([self.one(x), self.three(x), self.pool(x)], dim=1)
        x = nn.functional.adaptive_max_pool2d(x, 4)
        return self.head(x.view(x.size(0), -1))


def test_engine_handles_concatenation_and_size_queries():
    torch.manual_seed(0)
    model = Inceptionish().double().eval()
    x = torch.randn(1, 3, 24, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    engine = IncrementalEngine.build(model, x)
    assert "merge" in {s.kind for s in engine.program.steps} and "shape" in {s.kind for s in engine.program.steps}
    inc = occlusion(model, x, 2, window=5, stride=3, score="logit")
    plain = occlusion(model, x, 2, window=5, stride=3, score="logit", incremental=False)
    assert inc.recipe.params["engine"] == "incremental"
    assert plain.extras["grid"].abs().max() > 0
    assert torch.allclose(inc.extras["grid"], plain.extras["grid"], atol=1e-12)


class SharedInPlace(nn.Module):
    """An in-place ReLU overwrites a tensor that is read again afterwards: only the model's own forward is right."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        z = nn.functional.relu(y, True)
        return self.head((z + y).mean((2, 3)))


def test_in_place_op_on_a_shared_tensor_takes_the_plain_path():
    torch.manual_seed(0)
    model = SharedInPlace().double().eval()
    x = torch.randn(1, 3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    result = occlusion(model, x, 1, window=4, stride=2, score="logit")
    assert result.recipe.params["engine"] == "plain"
    assert IncrementalEngine.build(model, x) is None
