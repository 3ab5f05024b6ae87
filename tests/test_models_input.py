"""A plain `nn.Module` gets the input it takes (channels from its first conv, size by probing), and an input of
the wrong size is one `InputShapeError` naming the size the model expects."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convscope as cs
from convscope import attribution as A
from convscope import analysis, featvis
from convscope.errors import InputShapeError
from convscope.hooks import hook_count
from convscope.models import predict, spec_for_module

pytestmark = pytest.mark.usefixtures("one_thread")


def _mnist_like() -> nn.Module:
    """Grayscale, fixed 28x28: conv 3x3 -> 26, pool -> 13, a Linear that fits 13x13 only (and 14x14 from 29 px)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 13 * 13, 10))


def _any_size() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 5))


def test_a_grayscale_28px_network_gets_1x28x28_not_3x224x224():
    spec = cs.load(_mnist_like())
    assert spec.channels == 1 and spec.input_size == (28, 28)
    assert "first convolution" in spec.source["input"] and "smallest size" in spec.source["input"]
    assert "assumed" not in spec.source  # both were read from the model, nothing assumed
    vis = featvis.render(_mnist_like(), featvis.channel("0", 1), steps=2, seed=0)
    assert vis.images.shape[1:] == (1, 28, 28)


def test_a_network_that_runs_at_any_size_gets_224_and_says_so():
    spec = cs.load(_any_size())
    assert spec.channels == 3 and spec.input_size == (224, 224)
    assert "any size" in spec.source["assumed"] and "input_size=" in spec.source["assumed"]


def test_without_a_conv_the_channel_count_is_found_by_probing_and_marked_assumed():
    spec = cs.load(nn.Sequential(nn.Flatten(), nn.Linear(1 * 12 * 12, 3)))
    assert spec.channels == 1 and spec.input_size == (12, 12) and "no convolution" in spec.source["assumed"]
    given = spec_for_module(nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 5, 3)), channels=2, input_size=(3, 5))
    assert given.channels == 2 and given.input_size == (3, 5) and "assumed" not in given.source


def test_probing_leaves_the_model_as_found():
    model = nn.Sequential(nn.Conv2d(1, 3, 5), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.5),
                          nn.Flatten(), nn.Linear(3 * 10 * 10, 10)).train()  # an architecture no other test probes
    model[0].weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    assert spec_for_module(model).input_size == (24, 24)
    assert model.training and all(m.training for m in model.modules())
    assert not model[0].weight.requires_grad and model[6].weight.requires_grad
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # batch-norm statistics too
    assert torch.equal(rng, torch.get_rng_state()) and hook_count(model) == 0


def test_a_wrong_input_size_names_the_size_the_model_takes():
    model = _mnist_like().eval()
    spec = cs.load(model)
    wrong = torch.rand(1, 1, 32, 32)
    for run in (lambda: A.saliency(spec, wrong, target=1), lambda: A.gradcam(spec, wrong, layer="0"),
                lambda: A.integrated_gradients(spec, wrong, steps=4), lambda: A.saliency(model, wrong),
                lambda: spec.run(wrong)):
        with pytest.raises(InputShapeError) as info:
            run()
        message = str(info.value)
        assert "32x32" in message and "1x28x28" in message and "\n" not in message
    with pytest.raises(InputShapeError, match="2x2 pixels .* 1x28x28"):  # smaller than the first conv's kernel
        analysis.activations(spec, torch.rand(1, 1, 2, 2), "0")
    assert analysis.activations(spec, torch.rand(1, 1, 32, 32), "2").tensor.shape == (4, 30, 30)  # stops before
    assert hook_count(model) == 0
    assert A.saliency(spec, torch.rand(1, 1, 28, 28), target=1).attributions.shape == (1, 1, 28, 28)
    assert predict(spec, torch.rand(1, 1, 40, 40)).probs.shape == (1, 5)  # pixels are resized to 28x28 first


def test_other_sizes_are_fine_for_a_network_that_runs_at_any_size():
    spec = cs.load(_any_size())
    assert A.saliency(spec, torch.rand(1, 3, 20, 36), target=0).attributions.shape == (1, 3, 20, 36)


def test_a_network_whose_size_cannot_be_found_asks_for_it_when_run():
    model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 6 * 10, 3)).eval()
    spec = spec_for_module(model)  # runs at 6x10 only: no square probe runs
    assert spec.source["input_found"] is False and "input_size=(H, W)" in spec.source["assumed"]
    assert A.saliency(spec, torch.rand(1, 3, 6, 10), target=0).attributions.shape == (1, 3, 6, 10)
    with pytest.raises(InputShapeError, match=r"input size is unknown.*input_size=\(H, W\)"):
        A.saliency(spec, torch.rand(1, 3, 224, 224), target=0)
    assert spec_for_module(model, input_size=(6, 10)).input_size == (6, 10)


def test_other_errors_are_not_mistaken_for_size_errors():
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("something else went wrong")

    spec = spec_for_module(nn.Sequential(nn.Conv2d(1, 1, 1)), input_size=(4, 4))
    spec.module = Broken()
    with pytest.raises(RuntimeError, match="something else"):
        spec.run(torch.rand(1, 1, 8, 8))
