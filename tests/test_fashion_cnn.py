"""The shipped `convscope:fashion-cnn`: a small file that describes itself and classifies Fashion-MNIST well."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import convscope.models
from convscope.data import FASHION_MNIST_CLASSES
from convscope.models import evaluate, load
from convscope.models.files import read_safetensors

WEIGHTS = Path(convscope.models.__file__).parent / "weights"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_file_is_small_and_self_describing():
    path = WEIGHTS / "fashion-cnn.safetensors"
    assert path.stat().st_size < 1.5e6
    _, metadata = read_safetensors(path)
    assert metadata["arch"] == "convscope:small-cnn,channels=1,num_classes=10,size=28x28"
    assert metadata["class_names"] == FASHION_MNIST_CLASSES and metadata["mean"] == [0.5]
    assert metadata["dataset"] == "fashion-mnist:train" and metadata["train_items"] == 60000
    assert metadata["command"].startswith("convscope train small-cnn --data fashion-mnist")
    assert metadata["command"] in (WEIGHTS / "README.md").read_text()  # the README gives the exact command


def test_loads_by_name_with_readable_layers():
    spec = load("convscope:fashion-cnn")
    assert spec.name == "convscope:fashion-cnn" and spec.channels == 1 and spec.input_size == (28, 28)
    assert spec.class_index("Ankle boot") == 9 and not spec.module.training
    layers = {name for name, _ in spec.module.named_modules()}
    assert {"conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1", "dropout", "fc2"} <= layers


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_accuracy_on_the_fashion_mnist_test_set():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = evaluate("convscope:fashion-cnn", "fashion-mnist", batch_size=500)
    finally:
        torch.set_num_threads(threads)
    assert result.count == 10000
    assert result.top1 >= 0.88, result.per_class()
    assert result.top5 > result.top1 and min(v for v in result.per_class().values()) > 0.5
