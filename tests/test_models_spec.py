"""`ModelSpec.batch`: the one check of a (C, H, W) / (B, C, H, W) tensor against a model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convscope.errors import InputShapeError, NonFiniteError
from convscope.models import ModelSpec


def _spec(**to) -> ModelSpec:
    return ModelSpec(module=nn.Conv2d(3, 2, 3).to(**to), name="tiny-conv", channels=3, input_size=(8, 8))


def test_batch_refuses_wrong_dimensions_channels_and_non_finite_values():
    spec = _spec()
    for shape in [(8, 8), (3, 8), (1, 1, 3, 8, 8)]:
        with pytest.raises(InputShapeError, match=r"\(B, C, H, W\)"):
            spec.batch(torch.rand(shape))
    with pytest.raises(InputShapeError, match=r"init image .*2 channels; model 'tiny-conv' takes 3"):
        spec.batch(torch.rand(1, 2, 8, 8), "init image")
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.rand(2, 3, 8, 8)
        x[1, 2, 3, 4] = bad
        with pytest.raises(NonFiniteError, match="pixels"):
            spec.batch(x, "pixels")
    with pytest.raises(TypeError, match="ndarray"):
        spec.batch(torch.rand(3, 8, 8).numpy())  # type: ignore[arg-type]


def test_batch_adds_the_batch_dimension_and_detaches_without_copying():
    spec = _spec()
    x = torch.rand(3, 5, 7, requires_grad=True)
    out = spec.batch(x)
    assert out.shape == (1, 3, 5, 7) and not out.requires_grad
    assert out.data_ptr() == x.data_ptr() and torch.equal(out[0], x.detach())
    y = torch.rand(4, 3, 5, 7)
    assert spec.batch(y) is not y and spec.batch(y).data_ptr() == y.data_ptr()


def test_batch_follows_the_model_device_and_dtype():
    x = torch.rand(2, 3, 8, 8)
    double = _spec(dtype=torch.float64).batch(x)
    assert double.dtype == torch.float64 and torch.equal(double, x.double())
    meta = _spec(device="meta").batch(x)  # a device other than the input's, without needing a GPU
    assert meta.device.type == "meta" and meta.dtype == torch.float32 and meta.shape == x.shape
