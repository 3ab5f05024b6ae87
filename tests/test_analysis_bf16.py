"""bf16 scans: candidates found in bfloat16, re-scored in float32, equal to the float32 brute force bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from convscope import analysis, data
from convscope.models import load

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.usefixtures("one_thread")


def _same_topk(a, b):
    for name in a.layers:
        for field in ("values", "indices", "labels", "rows", "cols"):
            assert torch.equal(getattr(a[name], field), getattr(b[name], field)), (name, field)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_bf16_topk_equals_float32():
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    options = dict(k=9, limit=400, batch_size=64, shard_size=128)
    exact = analysis.scan(spec, fashion, ["conv1", "conv2", "fc1"], **options)
    fast = analysis.scan(spec, fashion, ["conv1", "conv2", "fc1"], precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    report = fast.bf16
    assert report["rescored_images"] < 400  # only candidates ran in float32
    # Exact in bf16: max (the exact top-1) and dead; the rest is approximate and says so.
    assert fast.stats.exact == ("max", "dead")
    for name in ("conv1", "conv2", "fc1"):
        assert torch.equal(fast.stats[name].max, exact.stats[name].max)
        assert torch.equal(fast.stats[name].dead, exact.stats[name].dead)
        assert torch.allclose(fast.stats[name].mean, exact.stats[name].mean, rtol=0.05, atol=0.02)


def _photo_crops(size: int = 64) -> data.ArrayDataset:
    import skimage.data

    crops, labels = [], []
    for label, name in enumerate(("chelsea", "coffee", "astronaut", "rocket")):
        image = getattr(skimage.data, name)()[..., :3]
        h, w = image.shape[:2]
        for i, (y, x) in enumerate([(0, 0), (h // 3, w // 3), (h // 2, w // 2), (h - size * 2, w - size * 2)]):
            for scale in (1, 2):
                crop = image[y:y + size * scale:scale, x:x + size * scale:scale]
                crops.append(np.ascontiguousarray(crop))
                labels.append(label)
    return data.ArrayDataset(np.stack(crops), np.array(labels), ["cat", "coffee", "astronaut", "rocket"])


def test_mobilenet_bf16_topk_equals_float32():
    spec = load("torchvision:mobilenet_v2@IMAGENET1K_V1")
    spec = dataclasses.replace(spec, input_size=(64, 64), resize=None)
    crops = _photo_crops()
    options = dict(k=4, batch_size=8, shard_size=16, stats=False)
    layers = ["features.2", "features.5.conv.2"]
    exact = analysis.scan(spec, crops, layers, units="0-23", **options)
    fast = analysis.scan(spec, crops, layers, units="0-23", precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
