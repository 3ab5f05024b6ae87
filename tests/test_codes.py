"""analysis.codes: pooled codes equal a full forward pass pooled by hand; the default layer is found from the
structure; bad files are skipped and reported; samples are seeded; the model is left alone; results load back."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import image_folder

from convscope.analysis import Codes, codes
from convscope.analysis.codes import conv_linear_layers, default_layer, sample_indices
from convscope.data import ArrayDataset, ImageFolder
from convscope.errors import LayerNotFoundError
from convscope.hooks import hook_count
from convscope.models import spec_for_module

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """conv -> ReLU -> conv -> functional pooling -> fc1 -> ReLU -> dropout -> fc2 (no module outputs fc1's input)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3))
        self.fc1 = nn.Linear(8, 7)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3))
        return self.fc2(self.drop(torch.relu(self.fc1(h))))


def _dataset(n: int = 20) -> ArrayDataset:
    rng = np.random.default_rng(1)
    return ArrayDataset(rng.integers(0, 256, (n, 12, 12, 3), dtype=np.uint8), rng.integers(0, 3, n),
                        ["a", "b", "c"], name="random")


def test_codes_equal_a_full_forward_pooled_by_hand():
    model = Net().train()  # left in training mode: codes must use eval mode and restore it
    spec = spec_for_module(model, input_size=(12, 12))
    data = _dataset()
    found = codes(spec, data, ["features.0", "features.2", "fc2:input", "input"], batch_size=7)
    found_max = codes(spec, data, ["features.2"], pool="max", batch_size=20)
    x = torch.stack([data[i][0] for i in range(len(data))])
    model.eval()
    with torch.no_grad():
        c0 = model.features[0](x)
        c2 = model.features[2](model.features[1](c0))
        hidden = torch.relu(model.fc1(c2.mean(dim=(2, 3))))
    torch.testing.assert_close(found.codes["features.0"], c0.mean(dim=(2, 3)))
    torch.testing.assert_close(found.codes["features.2"], c2.mean(dim=(2, 3)))
    torch.testing.assert_close(found_max.codes["features.2"], c2.amax(dim=(2, 3)))
    torch.testing.assert_close(found.codes["fc2:input"], hidden)  # dropout is off in eval mode
    torch.testing.assert_close(found.codes["input"], x.flatten(1))  # 12x12 is under the 16x16 pooling cap
    assert found.indices.tolist() == list(range(20))
    assert found.labels.tolist() == data.labels.tolist() and found.classes == ("a", "b", "c")
    assert found.sources[3] == "random[3]" and found.codes["fc2:input"].dtype == torch.float32


def test_model_is_left_as_found():
    model = Net().train()
    model.fc1.weight.requires_grad_(False)
    before = {n: (m.training, id(m)) for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    codes(spec_for_module(model, input_size=(12, 12)), _dataset(6))
    assert {n: (m.training, id(m)) for n, m in model.named_modules()} == before
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert hook_count(model) == 0


def test_default_layer_is_the_input_of_the_last_linear_found_structurally():
    assert default_layer(Net()) == "fc2:input"
    convs_only = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 4, 3), nn.AdaptiveAvgPool2d(1))
    assert default_layer(convs_only) == "2"
    assert conv_linear_layers(Net()) == ["features.0", "features.2", "fc1", "fc2"]
    with pytest.raises(LayerNotFoundError, match="fc2"):
        codes(spec_for_module(Net(), input_size=(12, 12)), _dataset(4), ["fc3"])


def test_a_bad_file_is_reported_and_skipped(tmp_path):
    image_folder(tmp_path, ("cats", "dogs"), 2, 12, broken="dogs/broken.png")
    data = ImageFolder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = codes(spec_for_module(Net(), input_size=(12, 12)), data, ["fc1"])
    assert len(found) == 4 and found.labels.tolist() == [0, 0, 1, 1]
    assert len(found.skipped) == 1 and found.skipped[0][0].endswith("broken.png")
    assert all("broken" not in s for s in found.sources)


def test_samples_are_seeded():
    assert sample_indices(10, None, 0).tolist() == list(range(10))
    assert sample_indices(10, 50, 0).tolist() == list(range(10))
    a, b, c = sample_indices(1000, 30, 0), sample_indices(1000, 30, 0), sample_indices(1000, 30, 1)
    assert a.tolist() == b.tolist() and a.tolist() != c.tolist()
    assert len(set(a.tolist())) == 30 and a.tolist() == sorted(a.tolist())


def test_codes_save_and_load_back(tmp_path):
    found = codes(spec_for_module(Net(), input_size=(12, 12)), _dataset(9), ["features.2", "fc2:input"], limit=7,
                  seed=3)
    found.save(tmp_path / "codes.png")
    back = Codes.load(tmp_path / "codes.png")
    assert back.layers == found.layers and back.sources == found.sources and back.classes == found.classes
    for name in found.layers:
        assert torch.equal(back.codes[name], found.codes[name])
    assert torch.equal(back.indices, found.indices) and back.recipe.params == found.recipe.params
    assert (tmp_path / "codes.json").is_file() and Image.open(tmp_path / "codes.png").size[0] > 0
