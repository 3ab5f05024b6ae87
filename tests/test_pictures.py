"""Activation grids and filter grids: the numbers are the model's, dead channels are really dead, the smoothness
score orders smooth, noisy and oscillating filters, and the model is left as found."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convscope.analysis import activations, dead_channels, filter_smoothness, filters
from convscope.errors import InputShapeError, LayerNotFoundError, NonFiniteError
from convscope.hooks import hook_count
from convscope.models.spec import ModelSpec


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():  # channel 2 of conv1 can never fire: dead on every image
            self.conv1.weight[2].zero_()
            self.conv1.bias[2] = -1.0

    def forward(self, x):
        x = self.relu(self.bn(self.conv1(x)))
        return self.fc(self.pool(self.relu(self.conv2(x))).flatten(1))


def _spec(model: nn.Module | None = None) -> ModelSpec:
    return ModelSpec(model or Small(), "small", channels=3, input_size=(16, 20), mean=(0.5, 0.4, 0.3),
                     std=(0.2, 0.25, 0.3))


def _pixels() -> torch.Tensor:
    return torch.rand(3, 16, 20, generator=torch.Generator().manual_seed(1))


def test_activations_are_the_model_outputs_and_dead_channels_are_found():
    spec = _spec()
    spec.module.train()  # left in training mode by the user: must come back that way
    pixels = _pixels()
    grid = activations(spec, pixels, "relu#0")
    x = spec.normalize(pixels[None])
    with torch.no_grad():
        model = spec.module
        bn = nn.functional.batch_norm(model.conv1(x), model.bn.running_mean, model.bn.running_var,
                                      model.bn.weight, model.bn.bias, training=False)
        expected = torch.relu(bn)[0]
    torch.testing.assert_close(grid.tensor, expected)
    assert 2 in grid.dead
    assert set(grid.dead) == {c for c in range(6) if expected[c].abs().max() == 0}
    assert all(m.training for m in spec.module.modules()) and hook_count(spec.module) == 0
    assert grid.recipe.params["layer"] == "relu#0"


def test_every_image_form_gives_the_same_activations(tmp_path):
    spec = _spec()
    pixels = _pixels()
    array = (pixels.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(array).save(path)
    quantized = torch.from_numpy(array).permute(2, 0, 1).float() / 255
    reference = activations(spec, spec.normalize(quantized[None]), "conv2").tensor  # normalized (1, C, H, W)
    for form in (path, str(path), Image.open(path), array, quantized):
        torch.testing.assert_close(activations(spec, form, "conv2").tensor, reference, atol=1e-5, rtol=1e-5)


def test_bad_image_tensors_are_refused():
    spec = _spec()
    with pytest.raises(InputShapeError, match=r"\(1, C, H, W\)"):
        activations(spec, spec.normalize(_pixels()[None])[0] * 3, "conv1")  # a normalized input without batch
    with pytest.raises(InputShapeError, match="takes 3"):
        activations(spec, torch.rand(1, 16, 20), "conv1")
    with pytest.raises(NonFiniteError):  # NaN pixels are refused, not passed on as a NaN picture
        activations(spec, torch.full((3, 16, 20), float("nan")), "conv1")


def test_vector_layer_and_pictures(tmp_path):
    spec = _spec()
    fc = activations(spec, _pixels(), "fc")
    assert fc.tensor.shape == (3,)
    assert fc.to_image().width > 0
    grid = activations(spec, _pixels(), "conv1")
    full = grid.to_image()
    few = grid.to_image(max_channels=2)
    assert few.width * few.height < full.width * full.height
    path = grid.save(tmp_path / "grid.png", norm="shared", cmap="inferno")
    assert Image.open(path).size[0] > 0
    recipe = json.loads(path.with_suffix(".json").read_text())
    assert recipe["kind"] == "activations" and recipe["params"]["layer"] == "conv1"
    assert grid._repr_png_().startswith(b"\x89PNG")
    summary = json.loads(json.dumps(grid.summary()))
    assert summary["dead"] == [] and summary["max"][2] == pytest.approx(-1.0)  # constant -1 before the ReLU: not dead


def test_dead_channels_over_a_batch():
    a = torch.zeros(2, 3, 4, 4)
    a[0, 1, 2, 2] = 1.0  # channel 1 fires on image 0 only: alive over the batch
    assert dead_channels(a) == [0, 2]
    assert dead_channels(a[1]) == [0, 1, 2]
    assert dead_channels(torch.tensor([0.0, 1e-9, 2.0]), eps=1e-6) == [0, 1]


def _gaussian(k: int, sigma: float) -> torch.Tensor:
    ax = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    return torch.exp(-(ax[:, None] ** 2 + ax[None] ** 2) / (2 * sigma**2))


def test_smoothness_orders_gaussian_noise_checkerboard():
    generator = torch.Generator().manual_seed(0)
    for k in (3, 5, 7):
        noise = filter_smoothness(torch.randn(200, 3, k, k, generator=generator, dtype=torch.float64))
        gauss = filter_smoothness(_gaussian(k, k / 4).expand(1, 3, k, k))
        checker = filter_smoothness(((-1.0) ** (torch.arange(k)[:, None] + torch.arange(k)[None])).expand(1, 1, k, k))
        assert gauss.item() > noise.quantile(0.99).item(), k
        assert checker.item() < noise.quantile(0.01).item(), k
        assert abs(noise.mean().item() - 0.55) < 0.03, k
    w = torch.randn(4, 2, 5, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(filter_smoothness(w), filter_smoothness(7.5 * w))  # scale invariant
    assert filter_smoothness(torch.ones(1, 3, 3, 3)).item() == pytest.approx(1.0)
    assert filter_smoothness(torch.randn(2, 3, 1, 1)).isnan().all()
    assert filter_smoothness(torch.zeros(1, 1, 3, 3)).isnan().all()


def test_smoothness_equals_an_explicit_laplacian():
    """Independent check: build the 4-neighbour grid Laplacian as a matrix, take its largest eigenvalue."""
    kh, kw = 4, 5
    idx = np.arange(kh * kw).reshape(kh, kw)
    lap = np.zeros((kh * kw, kh * kw))
    for a, b in list(zip(idx[:, :-1].ravel(), idx[:, 1:].ravel())) + list(zip(idx[:-1].ravel(), idx[1:].ravel())):
        lap[a, a] += 1
        lap[b, b] += 1
        lap[a, b] -= 1
        lap[b, a] -= 1
    top = np.linalg.eigvalsh(lap).max()
    w = np.random.default_rng(0).normal(size=(3, 2, kh, kw))
    expected = [1 - sum(c.ravel() @ lap @ c.ravel() for c in f) / (top * (f**2).sum()) for f in w]
    np.testing.assert_allclose(filter_smoothness(torch.from_numpy(w)).numpy(), expected, rtol=1e-10)


def test_filters_first_layer_and_deeper(tmp_path):
    spec = _spec()
    first = filters(spec)
    assert first.layer == "conv1" and first.input_space
    assert torch.equal(first.weights, spec.module.conv1.weight.detach())
    deeper = filters(spec, "conv2")
    assert not deeper.input_space and deeper.smoothness.shape == (4,)
    assert deeper.to_image(max_filters=2).height < deeper.to_image().height
    assert first.to_image().width > 0
    path = first.save(tmp_path / "f.png")
    assert path.exists() and json.loads(path.with_suffix(".json").read_text())["kind"] == "filters"
    assert [row["filter"] for row in deeper.table()] == [0, 1, 2, 3]
    with pytest.raises(LayerNotFoundError, match="'conv1', 'conv2'"):
        filters(spec, "fc")
    gray = filters(ModelSpec(nn.Sequential(nn.Conv2d(1, 4, 5)), "g", channels=1, input_size=(8, 8)))
    assert gray.input_space and gray.to_image().mode == "RGB"


def test_cli_activations_and_filters(monkeypatch, capsys, tmp_path):
    import convscope.models as models
    from convscope.cli import main

    monkeypatch.setattr(models, "load", lambda name, **_: _spec())
    image = tmp_path / "in.png"
    Image.fromarray((_pixels().permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(image)
    out = tmp_path / "grid.png"
    assert main(["activations", "small", str(image), "--layer", "relu#0", "-o", str(out), "--norm", "shared"]) == 0
    text = capsys.readouterr().out
    assert "dead on this image" in text and "2" in text and out.exists()
    assert main(["activations", "small", str(image), "--layer", "relu#0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dead"] == [2]
    assert main(["filters", "small", "-o", str(tmp_path / "f.png"), "--json"]) == 0
    table = json.loads(capsys.readouterr().out)["filters"]
    assert len(table) == 6 and table[2]["smoothness"] is None  # the zeroed filter: undefined
    assert main(["filters", "small", "--layer", "conv2"]) == 0
    assert "smoothness" in capsys.readouterr().out
    assert main(["activations", "small", str(image), "--layer", "conv9"]) == 2
    assert "conv1" in capsys.readouterr().err
