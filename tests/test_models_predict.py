"""predict() and evaluate(): agree with a hand computation, leave the model as found, map labels by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convscope.data import ArrayDataset
from convscope.errors import DatasetError
from convscope.hooks import hook_count
from convscope.models import ModelSpec, evaluate, predict


def _spec(seed: int = 0, classes: list[str] | None = None) -> ModelSpec:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 6 * 6, 4))
    return ModelSpec(net, "tiny", channels=1, input_size=(8, 8), mean=(0.5,), std=(0.25,),
                     class_names=classes or ["ant", "bee", "cat", "dog"])


def test_predict_matches_softmax_and_restores_training_mode():
    spec = _spec()
    spec.module.train()
    pixels = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    result = predict(spec, pixels, top=3)
    assert spec.module.training and hook_count(spec.module) == 0
    spec.module.eval()
    expected = spec.module((pixels - 0.5) / 0.25).softmax(-1)
    values, indices = expected.topk(3, dim=1)
    torch.testing.assert_close(result.probs, values.detach())
    assert torch.equal(result.indices, indices)
    assert result.names[0] == tuple(spec.class_names[int(i)] for i in indices[0])
    assert (result.probs[:, :-1] >= result.probs[:, 1:]).all()
    assert result.recipe.kind == "predict" and len(result.rows()) == 3


def test_predict_accepts_lists_arrays_and_resizes():
    spec = _spec()
    big = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    one = predict(spec, big, top=10)
    assert one.probs.shape == (1, 4)  # top capped at the number of classes
    both = predict(spec, [big, torch.from_numpy(big).float()[None] / 255])
    torch.testing.assert_close(both.probs[0], both.probs[1])
    assert both.inputs == ("input[0]", "input[1]")


def _dataset(spec: ModelSpec, n: int = 40) -> ArrayDataset:
    rng = np.random.default_rng(2)
    return ArrayDataset(rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), rng.integers(0, 4, n),
                        classes=spec.class_names)


def test_evaluate_agrees_with_a_hand_count():
    spec = _spec()
    data = _dataset(spec)
    result = evaluate(spec, data, batch_size=7)
    with torch.no_grad():
        x = (torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        out = spec.module.eval()(x)
    labels = torch.from_numpy(data.labels)
    top1 = (out.argmax(1) == labels).float().mean().item()
    assert result.top1 == pytest.approx(top1) and result.count == 40
    assert result.top5 == 1.0  # 4 classes: the true class is always among the top 4
    for k, name in enumerate(spec.class_names):
        mask = labels == k
        hand = (out.argmax(1)[mask] == k).float().mean().item() if mask.any() else None
        assert result.per_class()[name] == (pytest.approx(hand) if hand is not None else None)
    assert int(result.confusion.sum()) == 40 and torch.equal(result.confusion.sum(1), result.total)
    limited = evaluate(spec, data, limit=9)
    assert limited.count == 9


def test_evaluate_maps_dataset_classes_to_model_classes_by_name():
    spec = _spec()
    data = _dataset(spec)
    renamed = ArrayDataset(data.images, 3 - data.labels, classes=["dog", "cat", "bee", "ant"])
    assert evaluate(spec, renamed).top1 == pytest.approx(evaluate(spec, data).top1)
    stranger = ArrayDataset(data.images, data.labels, classes=["ant", "bee", "cat", "emu"])
    with pytest.raises(DatasetError, match="emu"):
        evaluate(spec, stranger)


def test_n_channel_models_are_first_class():
    from convscope.models import load

    spec = load("convscope:cnn4,channels=4,num_classes=3,size=16")
    rng = np.random.default_rng(5)
    data = ArrayDataset(rng.random((10, 16, 16, 4)).astype(np.float32), rng.integers(0, 3, 10))
    result = evaluate(spec, data, batch_size=4)
    assert result.count == 10 and spec.mean == (0.5,) * 4
    assert predict(spec, torch.rand(2, 4, 16, 16)).probs.shape == (2, 3)
