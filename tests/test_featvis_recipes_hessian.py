"""Invariances and evolution: Lanczos against a dense eigendecomposition, the softplus surrogate, strips, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convscope.errors import InputShapeError, LayerNotFoundError, OptionError, UnitOutOfRangeError, UnitSyntaxError
from convscope.featvis.evolution import evolution
from convscope.featvis.invariances import SmoothReLU, invariances, lanczos
from convscope.featvis.render import render
from convscope.hooks import function_mode, hook_count
from convscope.models import ModelSpec, load

pytestmark = pytest.mark.usefixtures("one_thread")


def _spec(module: nn.Module, size: int, channels: int = 1) -> ModelSpec:
    return ModelSpec(module, "tiny", channels=channels, input_size=(size, size))


def _tiny(dtype=torch.float64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.ReLU6()).to(dtype)


# -- Lanczos ---------------------------------------------------------------------------------------------------------

def _symmetric(n: int, rank: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    if rank is not None:
        b = torch.randn(n, rank, generator=g, dtype=torch.float64)
        return b @ b.T
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    return a + a.T


@pytest.mark.parametrize("rank", [None, 3])
def test_lanczos_full_space_equals_eigh(rank):
    a = _symmetric(30, rank)
    start = torch.randn(30, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = lanczos(lambda v: a @ v, start, 30, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(result.eigenvalues, torch.linalg.eigvalsh(a), atol=1e-9)
    assert bool((result.eigenvalues[1:] >= result.eigenvalues[:-1]).all())
    v = result.eigenvectors
    assert torch.allclose(v @ v.T, torch.eye(30, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(v @ a @ v.T, torch.diag(result.eigenvalues), atol=1e-8)


def test_lanczos_extremes_converge_first():
    a = _symmetric(200)
    start = torch.randn(200, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = lanczos(lambda v: a @ v, start, 60)
    exact = torch.linalg.eigvalsh(a)
    assert abs(float(result.eigenvalues[-1] - exact[-1])) < 1e-6 * float(exact.abs().max())
    assert abs(float(result.eigenvalues[0] - exact[0])) < 1e-6 * float(exact.abs().max())
    top = result.eigenvectors[-1]
    assert float((a @ top - result.eigenvalues[-1] * top).norm()) == pytest.approx(float(result.residuals[-1]), abs=1e-6)


def test_lanczos_stays_in_a_projected_subspace():
    a = _symmetric(12)
    mask = (torch.arange(12) % 3 == 0).double()  # a 4-dimensional coordinate subspace

    def op(v):
        return mask * (a @ (mask * v))

    start = mask * torch.randn(12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = lanczos(op, start, 12, generator=torch.Generator().manual_seed(2), project=lambda v: mask * v)
    assert result.eigenvalues.numel() == 4  # stops once the subspace is spanned
    assert torch.equal(result.eigenvectors * (1 - mask), torch.zeros(4, 12, dtype=torch.float64))
    inner = a[mask.bool()][:, mask.bool()]
    assert torch.allclose(result.eigenvalues, torch.linalg.eigvalsh(inner), atol=1e-9)


# -- the smooth surrogate --------------------------------------------------------------------------------------------

def _softplus_copy(model: nn.Sequential, beta: float) -> nn.Sequential:
    """An independent smooth model: ReLU -> nn.Softplus, ReLU6 -> softplus(x) - softplus(x - 6)."""
    class SmoothClamp(nn.Module):
        def forward(self, x):
            return F.softplus(x, beta) - F.softplus(x - 6, beta)

    smooth = copy.deepcopy(model)
    for i, m in enumerate(smooth):
        if isinstance(m, nn.ReLU6):
            smooth[i] = SmoothClamp()
        elif isinstance(m, nn.ReLU):
            smooth[i] = nn.Softplus(beta)
    return smooth


def test_smooth_relu_matches_explicit_softplus_and_approaches_relu():
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(inplace=True), nn.Conv2d(3, 3, 1), nn.ReLU6(),
                          nn.LeakyReLU(0.1)).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64) * 4
    with function_mode(SmoothReLU(5.0)):
        smooth = model(x)
    pre = model[2](F.softplus(model[0](x), 5.0))
    expected = F.softplus(pre, 5.0) - F.softplus(pre - 6, 5.0)
    expected = 0.1 * expected + 0.9 * F.softplus(expected, 5.0)
    assert torch.allclose(smooth, expected, atol=1e-12)
    with function_mode(SmoothReLU(1e4)):
        sharp = model(x)
    assert torch.allclose(sharp, model(x), atol=1e-3)


def test_smooth_relu_reads_keyword_arguments():
    x = torch.randn(3, 5, dtype=torch.float64) * 3
    with function_mode(SmoothReLU(5.0)):
        by_keyword = (torch.relu(input=x), F.hardtanh(input=x, min_val=0.0, max_val=2.0),
                      F.leaky_relu(input=x, negative_slope=0.2))
    with function_mode(SmoothReLU(5.0)):
        by_position = (F.relu(x), F.hardtanh(x, 0.0, 2.0), F.leaky_relu(x, 0.2))
    for a, b in zip(by_keyword, by_position):
        assert torch.equal(a, b)
    assert torch.allclose(by_keyword[0], F.softplus(x, 5.0))  # not the plain ReLU


# -- invariances -----------------------------------------------------------------------------------------------------

def _dense_hessian(model: nn.Module, unit_channel: int, x: torch.Tensor, beta: float) -> torch.Tensor:
    smooth = _softplus_copy(model, beta)

    def activation(pixels):
        return smooth(pixels.view_as(x))[0, unit_channel].mean()

    return torch.autograd.functional.hessian(activation, x.flatten())


def test_invariances_match_dense_hessian_eigenvectors():
    model = _tiny()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    exact_values, exact_vectors = torch.linalg.eigh(_dense_hessian(model, 1, x, beta=4.0))
    result = invariances(_spec(model, 6), "3:1", optimum=x, k=2, iterations=36, beta=4.0, tangent=False, margin=0)
    by_magnitude = exact_values.abs().argsort(descending=True)
    assert torch.allclose(result.eigenvalues[:2], exact_values[by_magnitude[:2]], atol=1e-8)
    assert torch.allclose(result.eigenvalues[2:], exact_values[by_magnitude.flip(0)[:2]], atol=1e-8)
    for d in range(2):  # the steepest directions are the dense eigenvectors, up to sign
        overlap = torch.dot(result.eigenvectors[d].flatten(), exact_vectors[:, by_magnitude[d]])
        assert abs(float(overlap)) == pytest.approx(1.0, abs=1e-6)
    flat = result.eigenvectors.flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(4, dtype=torch.float64), atol=1e-8)
    assert hook_count(model) == 0


def test_tangent_directions_are_orthogonal_to_the_gradient():
    model = _tiny()
    x = torch.rand(1, 1, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) * 0.8 + 0.1
    result = invariances(_spec(model, 6), "3:1", optimum=x, k=2, iterations=20, beta=4.0, margin=0)
    for network in (_softplus_copy(model, 4.0), model):  # the surrogate's gradient and the real network's
        pixels = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(network(pixels)[0, 1].mean(), pixels)
        assert torch.allclose(result.eigenvectors.flatten(1) @ grad.flatten(), torch.zeros(4, dtype=torch.float64),
                              atol=1e-10)


def _small_cnn() -> ModelSpec:
    torch.manual_seed(1)
    module = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3), nn.ReLU())
    return ModelSpec(module, "tiny", channels=1, input_size=(16, 16), mean=(0.5,), std=(0.5,))


def test_flattest_directions_change_the_activation_less():
    spec = _small_cnn()
    module = spec.module.train()
    before = {k: v.clone() for k, v in module.state_dict().items()}
    result = invariances(spec, "3:2", k=3, steps=48, radius=0.03, seed=0)
    change = result.change()
    assert float(change[3:].mean()) < float(change[:3].mean())
    assert float(result.eigenvalues[:3].abs().min()) > float(result.eigenvalues[3:].abs().max())
    assert result.strips.shape == (6, 5, 1, 16, 16) and result.activations.shape == (6, 5)
    assert torch.allclose(result.activations[:, 2], torch.full((6,), result.activation))
    assert float(result.strips.min()) >= 0 and float(result.strips.max()) <= 1
    assert module.training and hook_count(module) == 0
    assert all(torch.equal(v, before[k]) for k, v in module.state_dict().items())
    assert result.recipe.params["surrogate"].startswith("softplus")
    assert result.trace.shape == (48,) and result.trace[-8:].mean() > result.trace[:8].mean()
    assert result.to_image().height > 6 * 16


@pytest.mark.parametrize("resolution", [None, 12])
def test_saturated_pixels_stay_fixed(resolution):
    spec = _small_cnn()
    optimum = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(6)) * 0.8 + 0.1
    optimum[..., :4, :] = 1.0  # pushed against the box: held by the constraint, not free
    result = invariances(spec, "3:2", k=2, optimum=optimum, resolution=resolution)
    assert torch.equal(result.eigenvectors[..., :4, :], torch.zeros(4, 1, 4, 16))
    assert torch.equal(result.strips[..., :4, :], torch.ones(4, 5, 1, 4, 16))
    if resolution is None:
        assert result.recipe.params["free_coordinates"] == 12 * 16


def test_block_directions_are_constant_on_blocks():
    spec = _small_cnn()
    optimum = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 0.8 + 0.1
    result = invariances(spec, "3:2", k=2, optimum=optimum, resolution=4)
    blocks = result.eigenvectors.view(4, 1, 4, 4, 4, 4)  # (direction, C, block row, row, block col, col)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    flat = result.eigenvectors.flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(4), atol=1e-5)


def test_invariances_same_seed_same_output():
    spec = _small_cnn()
    a = invariances(spec, "3:2", k=2, steps=12, seed=5)
    b = invariances(spec, "3:2", k=2, steps=12, seed=5)
    assert torch.equal(a.optimum, b.optimum) and torch.equal(a.eigenvectors, b.eigenvectors)
    assert torch.equal(a.strips, b.strips)


def test_a_linear_unit_has_a_zero_hessian():
    spec = _small_cnn()
    result = invariances(spec, "0:1", k=2, optimum=torch.rand(1, 1, 16, 16) * 0.8 + 0.1)
    assert torch.equal(result.eigenvalues, torch.zeros(4))
    assert result.recipe.params["linear"]


@pytest.mark.parametrize("unit, options, expected", [
    ("conv9:1", {}, LayerNotFoundError),
    ("3:8", {}, UnitOutOfRangeError),
    ("3", {}, UnitSyntaxError),
    ("3:1", {"k": 0}, OptionError),
    ("3:1", {"optimum": torch.rand(1, 3, 16, 16)}, InputShapeError),
])
def test_invariances_bad_inputs(unit, options, expected):
    spec = _small_cnn()
    with pytest.raises(expected):
        invariances(spec, unit, steps=2, **options)
    assert hook_count(spec.module) == 0
    assert all(p.requires_grad for p in spec.module.parameters())


# -- evolution -------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from convscope.models.train import train

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(40)
    prototypes = torch.rand(3, 28, 28, generator=g)
    images = (prototypes[labels] + 0.2 * torch.randn(len(labels), 28, 28, generator=g)).clamp(0, 1)
    out = tmp_path_factory.mktemp("evo") / "model.safetensors"
    train("small-cnn", (images.numpy(), labels.numpy()), epochs=2, checkpoint_every=1, out=out, batch_size=32,
          heldout_fraction=0)
    return [out.with_name("model.epoch1.safetensors"), out]


def test_evolution_differs_by_weights_only(checkpoints):
    result = evolution(checkpoints, "conv2:3", steps=8, seed=2)
    assert result.labels == ["epoch 1", "epoch 2"]
    assert result.images.shape == (2, 1, 28, 28)
    assert not torch.equal(result.images[0], result.images[1])
    for path, image in zip(checkpoints, result.images):  # the same seed and options as a plain render
        alone = render(load(path), "conv2:3", steps=8, seed=2)
        assert torch.equal(alone.images[0], image)
    again = evolution(checkpoints, "conv2:3", steps=8, seed=2)
    assert torch.equal(again.images, result.images)
    assert result.to_image().width > 2 * 28


def test_evolution_rejects_mixed_architectures(checkpoints):
    other = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(InputShapeError):
        evolution([checkpoints[0], other], "conv2:3", steps=2)
