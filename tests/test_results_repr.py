"""`print(result)` is a short summary (kind, shape, target, model), never a dump of the tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import convscope as cs
from convscope import analysis
from convscope import attribution as A
from convscope.models import predict
from convscope.results import Recipe, ResultMixin


def _spec():
    return cs.load("convscope:small-cnn")


def test_attribution_prints_kind_shape_target_and_model_not_values():
    spec = _spec()
    x = torch.rand(2, 1, 28, 28)
    result = A.saliency(spec, x, target=3)
    for text in (repr(result), str(result)):
        assert "tensor(" not in text and len(text) < 200 and "\n" not in text
        assert text.startswith("Attribution(") and "method='saliency'" in text
        assert str(tuple(result.attributions.shape)) in text
        assert "target=3" in text and "model='convscope:small-cnn'" in text
    cam = repr(A.gradcam(spec, x, layer="conv2"))
    assert "layer='conv2'" in cam and "target='predicted'" in cam


def test_every_kind_of_result_is_short():
    spec = _spec()
    x = torch.rand(1, 1, 28, 28)
    results = [predict(spec, x), analysis.activations(spec, x[0], "conv1"), analysis.filters(spec, "conv1"),
               A.evaluate.deletion(spec, A.saliency(spec, x), steps=3)]
    for result in results:
        text = repr(result)
        assert text.startswith(type(result).__name__ + "(") and "tensor(" not in text and len(text) < 200
        assert "convscope:small-cnn" in text


@dataclass(frozen=True)
class _Made(ResultMixin):
    values: torch.Tensor
    name: str
    recipe: Recipe


@dataclass(frozen=True)
class _Own(ResultMixin):
    values: torch.Tensor
    recipe: Recipe

    def __repr__(self) -> str:
        return "own"


def test_a_new_result_dataclass_gets_the_summary_unless_it_writes_its_own():
    recipe = Recipe("made", {"name": "m"}, {"unit": "conv1:3"})
    made = _Made(torch.zeros(4, 5), "x", recipe)
    assert repr(made) == "_Made(name='x', values=(4, 5), unit='conv1:3', model='m')"
    assert repr(_Own(torch.zeros(1), recipe)) == "own"
