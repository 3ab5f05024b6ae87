"""analysis.probe: linearly separable codes probe at ~1, shuffled labels at ~chance; the split is seeded and
stratified; on the trained fashion-cnn a layer near the output probes better than the input pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import fashion_available
from convscope.analysis import Codes, Probes, probe
from convscope.analysis.probe import probe_codes, probe_layers, split_items
from convscope.models import load
from convscope.results import Recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def _codes(features: dict[str, np.ndarray], labels: np.ndarray) -> Codes:
    n = len(labels)
    return Codes(codes={k: torch.from_numpy(v.astype(np.float32)) for k, v in features.items()},
                 indices=torch.arange(n), labels=torch.from_numpy(labels), classes=tuple("abcd"),
                 sources=tuple(f"x[{i}]" for i in range(n)), skipped=(), pool="mean",
                 recipe=Recipe(kind="codes", model={"name": "synthetic"}, params={"data": {"name": "synthetic"}}))


def test_separable_codes_probe_near_one_and_shuffled_labels_near_chance():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 100)
    separable = rng.normal(size=(400, 20))
    separable[np.arange(400), labels] += 6.0  # one dimension per class lifts it clear of the others
    noise = rng.normal(size=(400, 20))
    result = probe_codes(_codes({"separable": separable, "noise": noise}, labels), seed=0)
    assert result.chance == pytest.approx(0.25, abs=0.01)  # stratified: every class a quarter of the test set
    accuracy = dict(zip(result.layers, result.accuracy))
    assert accuracy["separable"] >= 0.97
    assert accuracy["noise"] < result.chance + 0.15
    shuffled = probe_codes(_codes({"separable": separable}, rng.permutation(labels)), seed=0)
    assert shuffled.accuracy[0] < shuffled.chance + 0.15
    assert result.n_train == 300 and result.n_test == 100 and result.dims == (20, 20)


def test_split_is_seeded_stratified_and_disjoint():
    labels = np.repeat(np.arange(3), [40, 20, 20])
    train, test = split_items(labels, 0.25, seed=0)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(80)) and not set(train) & set(test)
    assert np.bincount(labels[test]).tolist() == [10, 5, 5]
    again, other = split_items(labels, 0.25, seed=0), split_items(labels, 0.25, seed=1)
    assert again[1].tolist() == test.tolist() and other[1].tolist() != test.tolist()


def test_probes_save_load_and_draw(tmp_path):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(4), 10)
    result = probe_codes(_codes({"a": rng.normal(size=(40, 5)), "b": rng.normal(size=(40, 3))}, labels))
    path = result.save(tmp_path / "probes.png")
    back = Probes.load(path)
    assert back.rows() == result.rows() and back.chance == result.chance and back.recipe == result.recipe
    assert "chance" in result.table() and result.to_image().size[0] > 100


@pytest.mark.skipif(not fashion_available(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_cnn_layer_near_the_output_probes_better_than_pixels():
    spec = load("convscope:fashion-cnn")
    assert probe_layers(spec.module) == ["input", "conv1", "conv2", "fc1", "fc2:input", "fc2"]
    result = probe(spec, "fashion-mnist", ["input", "fc2:input"], limit=600, seed=0, batch_size=200)
    accuracy = dict(zip(result.layers, result.accuracy))
    assert result.n_test == 150 and result.dims == (256, 128)
    assert accuracy["fc2:input"] > accuracy["input"] + 0.03
    assert accuracy["fc2:input"] > 0.8 and accuracy["input"] > result.chance + 0.3
