"""A state dict loaded with `--arch NAME@WEIGHTS` takes those weights' preprocessing and class names from the
metadata alone (nothing downloaded); without a weights name, the assumed preprocessing is said and recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import convscope as cs
from convscope.cli import main
from convscope.models import predict

V1_FILE = Path(torch.hub.get_dir()) / "checkpoints" / "mobilenet_v2-b0353104.pth"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub and no downloads: any attempt to fetch weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("tried to download weights")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse, raising=False)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """A mobilenet_v2 state dict that is not torchvision's (seeded random weights)."""
    path = tmp_path_factory.mktemp("weights") / "mine.pth"
    torch.manual_seed(3)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    """A non-square photo, so the resize size matters."""
    rng = np.random.default_rng(0)
    pixels = np.kron(rng.integers(0, 256, (30, 40, 3)), np.ones((10, 10, 1))).astype(np.uint8)
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def test_a_weights_name_brings_its_preprocessing_and_class_names_without_downloading(weights_file, offline_hub):
    v1 = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1
    spec = cs.load(weights_file, arch="torchvision:mobilenet_v2@IMAGENET1K_V1")
    assert spec.resize == v1.transforms().resize_size[0] and spec.input_size == tuple(v1.transforms().crop_size) * 2
    assert spec.class_names == list(v1.meta["categories"]) and spec.class_index("tabby") == 281
    assert "IMAGENET1K_V1" in spec.source["preprocessing"] and "assumed" not in spec.source
    state = torch.load(weights_file, weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in spec.module.state_dict().items())  # the file's weights


def test_without_a_weights_name_the_assumed_preprocessing_is_said(weights_file, offline_hub, capsys, photo):
    spec = cs.load(weights_file, arch="torchvision:mobilenet_v2")
    default = torchvision.models.MobileNet_V2_Weights.DEFAULT
    assert spec.resize == default.transforms().resize_size[0] and spec.class_names is None
    note = spec.source["assumed"]
    assert default.name in note and f"resize {spec.resize}" in note and "torchvision:mobilenet_v2@" in note
    assert spec.describe()["assumed"] == note  # recorded in every result's recipe
    assert main(["predict", str(weights_file), str(photo), "--arch", "torchvision:mobilenet_v2", "--top", "1"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: ") and default.name in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not V1_FILE.is_file(), reason="torchvision's mobilenet_v2 IMAGENET1K_V1 file is not cached")
def test_the_v1_file_gives_the_same_answers_however_it_is_loaded(photo):
    by_name = cs.load("torchvision:mobilenet_v2@IMAGENET1K_V1")
    by_file = cs.load(V1_FILE, arch="torchvision:mobilenet_v2@IMAGENET1K_V1")
    assert (by_file.resize, by_file.input_size, by_file.mean, by_file.std, by_file.class_names) == \
        (by_name.resize, by_name.input_size, by_name.mean, by_name.std, by_name.class_names)
    a, b = predict(by_name, photo, top=5), predict(by_file, photo, top=5)
    assert torch.equal(a.indices, b.indices) and torch.allclose(a.probs, b.probs, atol=1e-6)
    assert a.names == b.names and not a.names[0][0].isdigit()
