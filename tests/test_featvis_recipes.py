"""Feature inversion and fooling images: properties on tiny seeded models, FGSM against a hand-computed step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import BadImageError, InputShapeError, LayerNotFoundError, OptionError, TargetError
from convscope.featvis.adversarial import adversarial
from convscope.featvis.inversion import invert, total_variation
from convscope.hooks import hook_count
from convscope.models import ModelSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def _photo(size: int = 32) -> torch.Tensor:
    from skimage import data

    from convscope.data.images import resize_crop

    pixels = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    return resize_crop(pixels, (size, size), size)


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 5))


def _spec(module: nn.Module, size: int = 32, channels: int = 3, **kw) -> ModelSpec:
    return ModelSpec(module, "tiny", channels=channels, input_size=(size, size), **kw)


def _snapshot(model: nn.Module):
    return ({k: v.clone() for k, v in model.state_dict().items()}, model.training,
            [p.requires_grad for p in model.parameters()])


def _unchanged(model: nn.Module, snap) -> None:
    state, training, grads = snap
    assert hook_count(model) == 0
    assert model.training == training
    assert [p.requires_grad for p in model.parameters()] == grads
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert all(p.grad is None for p in model.parameters())


# -- inversion -------------------------------------------------------------------------------------------------------

def test_inversion_lowers_code_error_and_trace():
    model = _cnn().train()
    snap = _snapshot(model)
    result = invert(_spec(model), _photo(), "3", steps=80, seed=1)
    assert result.code_error < 0.3 * result.initial_code_error
    quarter = len(result.trace) // 4
    assert result.trace[:quarter].mean() > result.trace[-quarter:].mean()
    assert result.reconstruction.shape == result.original.shape == (1, 3, 32, 32)
    assert 0 <= float(result.reconstruction.min()) and float(result.reconstruction.max()) <= 1
    assert result.recipe.params["layer"] == "3" and result.recipe.params["seed"] == 1
    _unchanged(model, snap)
    assert result.to_image().width > 2 * 32


def test_tv_prior_lowers_total_variation():
    spec = _spec(_cnn())
    plain = invert(spec, _photo(), "3", steps=60, tv=0.0)
    smooth = invert(spec, _photo(), "3", steps=60, tv=2.0)
    assert float(total_variation(smooth.reconstruction)) < 0.7 * float(total_variation(plain.reconstruction))


def test_inversion_same_seed_same_image():
    spec = _spec(_cnn())
    a = invert(spec, _photo(), "1", steps=15, seed=3, jitter=2)
    b = invert(spec, _photo(), "1", steps=15, seed=3, jitter=2)
    c = invert(spec, _photo(), "1", steps=15, seed=4, jitter=2)
    assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(a.trace, b.trace)
    assert not torch.equal(a.reconstruction, c.reconstruction)


class _Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_inversion_stops_at_the_layer():
    counter = _Counter()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), counter, nn.Conv2d(4, 4, 3))
    invert(_spec(model, 16), torch.rand(1, 3, 16, 16), "1", steps=6)
    assert counter.calls <= 1  # at most the one full pass that learns the call counts, never once per step


class _Explodes(nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("case", ["layer", "channels", "steps", "tv", "range", "raises"])
def test_inversion_bad_inputs(case):
    model = _cnn().train()
    spec = _spec(model)
    snap = _snapshot(model)
    image, layer, options = _photo(), "3", {"steps": 3}
    expected: type[Exception] = OptionError
    if case == "layer":
        layer, expected = "conv9", LayerNotFoundError
    elif case == "channels":
        image, expected = torch.rand(1, 2, 32, 32), InputShapeError
    elif case == "steps":
        options = {"steps": 0}
    elif case == "tv":
        options = {"steps": 3, "tv": -1.0}
    elif case == "range":
        image, expected = _photo() * 4 - 2, BadImageError  # a normalized input, not pixels
    else:
        model = nn.Sequential(nn.Conv2d(3, 4, 3), _Explodes(), nn.ReLU())
        spec, snap, layer, expected = _spec(model), _snapshot(model), "2", RuntimeError
    with pytest.raises(expected):
        invert(spec, image, layer, **options)
    _unchanged(model, snap)


# -- adversarial -----------------------------------------------------------------------------------------------------

def _linear_spec() -> ModelSpec:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).double()
    return _spec(model, 8, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm_equals_hand_computed_sign_step(targeted):
    spec = _linear_spec()
    linear = spec.module[1]
    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = 0.03
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    z = ((x - mean) / std).flatten(1)
    logits = z @ linear.weight.detach().T + linear.bias.detach()
    classes = (logits.argmax(1) + 1) % 4 if targeted else logits.argmax(1)
    # d CE / d logits = softmax - onehot; through the linear layer and the normalization by hand:
    dz = (logits.softmax(1) - F.one_hot(classes, 4).double()) @ linear.weight.detach()
    dx = dz.view_as(x) / std
    expected = (x + (-1 if targeted else 1) * eps * dx.sign()).clamp(0, 1)
    result = adversarial(spec, x, classes if targeted else None, eps=eps, method="fgsm")
    assert torch.allclose(result.adversarial, expected, atol=1e-12, rtol=0)


def test_fgsm_moves_the_loss_the_right_way_and_respects_the_ball():
    spec = _spec(_cnn())
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    eps = 4 / 255
    away = adversarial(spec, x, eps=eps, method="fgsm")
    towards = adversarial(spec, x, target=3, eps=eps, method="fgsm")
    assert away.trace[-1] > away.trace[0]
    assert towards.trace[-1] < towards.trace[0]
    for result in (away, towards):
        assert float(result.perturbation.abs().max()) <= eps + 1e-6
        assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
        assert torch.allclose(result.adversarial - result.original, result.perturbation)


@pytest.mark.parametrize("eps", [0.0, 1 / 255, 0.05, 0.5])
def test_pgd_stays_in_the_ball_and_the_valid_range(eps):
    spec = _spec(_cnn())
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    x[0] = 1.0  # saturated pixels: the valid range, not the ball, must bind
    result = adversarial(spec, x, target=[1, 2, 0], eps=eps, steps=5)
    assert float(result.perturbation.abs().max()) <= eps + 1e-6
    assert float(result.adversarial.min()) >= 0 and float(result.adversarial.max()) <= 1
    if eps == 0:
        assert torch.equal(result.adversarial, result.original)


def _trained_classifier() -> tuple[ModelSpec, torch.Tensor, torch.Tensor]:
    """A tiny CNN trained (seconds) on synthetic 1x8x8 images: four noisy prototypes."""
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(4, 1, 8, 8, generator=g)
    labels = torch.arange(4).repeat(160)
    images = (prototypes[labels] + 0.3 * torch.randn(len(labels), 1, 8, 8, generator=g)).clamp(0, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        F.cross_entropy(model(images * 2 - 1), labels).backward()
        optimizer.step()
    model.eval()
    spec = _spec(model, 8, channels=1, mean=(0.5,), std=(0.5,))
    return spec, images[:64], labels[:64]


def test_targeted_pgd_beats_fgsm_on_a_trained_model():
    spec, images, labels = _trained_classifier()
    with torch.no_grad():
        assert (spec.module(spec.normalize(images)).argmax(1) == labels).float().mean() > 0.9
    targets = (labels + 1) % 4
    fgsm = adversarial(spec, images, targets, eps=0.15, method="fgsm")
    pgd = adversarial(spec, images, targets, eps=0.15, method="pgd", steps=20, seed=0)
    fgsm_rate, pgd_rate = fgsm.success.float().mean(), pgd.success.float().mean()
    assert pgd_rate > fgsm_rate + 0.1, (fgsm_rate, pgd_rate)
    assert bool(((pgd.probs_after.argmax(1) == targets) == pgd.success).all())


def test_pgd_same_seed_same_result():
    spec = _spec(_cnn())
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    a = adversarial(spec, x, eps=0.03, steps=3, seed=7)
    b = adversarial(spec, x, eps=0.03, steps=3, seed=7)
    c = adversarial(spec, x, eps=0.03, steps=3, seed=8)
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_adversarial_picture_and_predictions(tmp_path):
    spec = _spec(_cnn(), class_names=["ant", "bee", "cat", "dog", "eel"])
    result = adversarial(spec, _photo(), target="dog", eps=8 / 255, steps=5)
    names = [name for _, name, _ in result.predictions(after=True, top=5)[0]]
    assert sorted(names) == ["ant", "bee", "cat", "dog", "eel"]
    assert abs(sum(p for *_, p in result.predictions(top=5)[0]) - 1) < 1e-5
    path = result.save(tmp_path / "adv.png")
    assert path.exists() and path.with_suffix(".json").exists()


@pytest.mark.parametrize("case", ["eps", "method", "target", "name", "channels", "steps"])
def test_adversarial_bad_inputs(case):
    model = _cnn().train()
    snap = _snapshot(model)
    spec = _spec(model)
    image, options = _photo(), {}
    expected: type[Exception] = OptionError
    if case == "eps":
        options = {"eps": -0.01}
    elif case == "method":
        options = {"method": "cw"}
    elif case == "target":
        options, expected = {"target": 5}, TargetError
    elif case == "name":
        options, expected = {"target": "tabby"}, TargetError
    elif case == "channels":
        image, expected = torch.rand(1, 1, 32, 32), InputShapeError
    else:
        options = {"steps": 0}
    with pytest.raises(expected):
        adversarial(spec, image, **options)
    _unchanged(model, snap)
