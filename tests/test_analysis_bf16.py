"""bf16 scans: candidates found in bfloat16, re-scored in float32, equal to the float32 scan bit for bit, through
every path that makes them exact (re-scored candidates, band passes, layers handed to float32, given-up units)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convscope import analysis, data, hooks
from convscope.analysis import _certify, _scan
from convscope.analysis._stats_state import HIST_EDGES, hist_bins
from convscope.analysis._topk_state import CandidateCollector
from convscope.errors import CheckpointError
from convscope.models import load

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")

FIELDS = ("values", "indices", "labels", "rows", "cols")


def _same_topk(a, b):
    for name in a.layers:
        for field in FIELDS:
            assert torch.equal(getattr(a[name], field), getattr(b[name], field)), (name, field)


@pytest.fixture(scope="module")
def fashion_pair():
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    options = dict(k=9, limit=400, batch_size=64, shard_size=128)
    layers = ["conv1", "conv2", "fc1"]
    before = torch.get_num_threads()  # module fixtures run before the one_thread fixture: pin here too
    torch.set_num_threads(1)
    try:
        return spec, fashion, options, layers, analysis.scan(spec, fashion, layers, **options)
    finally:
        torch.set_num_threads(before)


@needs_fashion
def test_fashion_bf16_topk_equals_float32(fashion_pair):
    spec, fashion, options, layers, exact = fashion_pair
    weights = {name: p.clone() for name, p in spec.module.named_parameters()}
    fast = analysis.scan(spec, fashion, layers, precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    report = fast.bf16
    # conv1's tight tops need a band: the bf16 pass kept it, so no band pass runs.
    assert report["band_units_in_pass"] and report["band_passes"] == 0
    assert report["band_units"] == report["band_units_in_pass"]
    assert report["float32_layers"] == []  # bf16 is close enough here: no layer handed to float32
    # Exact in bf16: max (the exact top-1) and dead; the rest is approximate and says so.
    assert fast.stats.exact == ("max", "dead")
    for name in layers:
        assert torch.equal(fast.stats[name].max, exact.stats[name].max)
        assert torch.equal(fast.stats[name].dead, exact.stats[name].dead)
        assert torch.allclose(fast.stats[name].mean, exact.stats[name].mean, rtol=0.05, atol=0.02)
        assert torch.allclose(fast.stats[name].std, exact.stats[name].std, rtol=0.05, atol=0.02)
    # The bf16 pass ran on a private channels-last copy: the model is as it was.
    for name, p in spec.module.named_parameters():
        assert torch.equal(p, weights[name]) and p.is_contiguous(), name


@needs_fashion
def test_fashion_bf16_with_band_passes_instead_of_kept_bands_is_still_exact(fashion_pair, monkeypatch):
    spec, fashion, options, layers, exact = fashion_pair
    monkeypatch.setattr(CandidateCollector, "banding", property(lambda self: False))
    fast = analysis.scan(spec, fashion, layers, precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    assert fast.bf16["band_passes"] >= 1 and fast.bf16["band_units"] and not fast.bf16["band_units_in_pass"]


@needs_fashion
def test_fashion_bf16_without_bands_or_with_float32_layers_is_still_exact(fashion_pair, monkeypatch):
    spec, fashion, options, layers, exact = fashion_pair
    # Bands that may hold almost nothing: every band unit is given up and recomputed in float32.
    monkeypatch.setattr(_certify, "BAND_LIMIT", 8)
    fast = analysis.scan(spec, fashion, layers, precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    assert fast.bf16["float32_layers"]
    # Every layer judged too far from float32 after the bf16 pass: one float32 pass, with exact statistics too.
    monkeypatch.setattr(_certify, "HOPELESS", -1.0)
    monkeypatch.setattr(_scan, "_bf16_pilot", lambda *args: ("bf16", None))  # the pilot lets it through
    fast = analysis.scan(spec, fashion, layers, precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    assert fast.bf16["float32_layers"] == layers
    assert fast.stats.to_dict()["layers"] == exact.stats.to_dict()["layers"]
    assert fast.stats.exact == exact.stats.exact
    # ... or already by the pilot on the first inputs: then no bf16 pass at all, and a float32 scan's result.
    monkeypatch.undo()
    monkeypatch.setattr(_certify, "PILOT_LIMIT", -1.0)
    fast = analysis.scan(spec, fashion, layers, precision="bf16", **options)
    assert fast.bf16["declined"] and set(fast.bf16["error_ratio"]) == set(layers)
    assert fast.topk.to_dict()["layers"] == exact.topk.to_dict()["layers"]
    assert fast.stats.to_dict()["layers"] == exact.stats.to_dict()["layers"]


def test_saturated_ties_stay_exact():
    # ReLU6 outputs saturate at exactly 6.0 in both precisions on most inputs: a tie far wider than the candidates.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(96, 8, 8), dtype=np.uint8)
    images[::2, 2:6, 2:6] = 255
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU6())
    with torch.no_grad():
        net[0].weight.abs_().mul_(4.0)
    spec = dataclasses.replace(load(net), input_size=(8, 8))
    dataset = data.ArrayDataset(images, np.zeros(96, dtype=np.int64))
    options = dict(k=5, batch_size=16, shard_size=32, stats=False)
    exact = analysis.scan(spec, dataset, ["1", "0"], **options)
    fast = analysis.scan(spec, dataset, ["1", "0"], precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    assert (exact.topk["1"].values == 6.0).any()


@needs_fashion
def test_float32_activations_depend_on_batch_size_only():
    # What re-scoring relies on: an image's float32 activations are the same whatever the other images in its batch
    # and its place there, as long as the batch has the same size.
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    x = next(iter(data.batches(fashion, spec, 128))).inputs
    layers = ["conv1", "conv2", "fc1", "fc2"]

    def run(inputs):
        with torch.inference_mode(), hooks.capture(spec.module, layers) as cap:
            spec.module(inputs)
            return {name: cap[name] for name in layers}

    for size in (64, 5):
        first = run(x[:size])
        order = torch.randperm(size, generator=torch.Generator().manual_seed(size))
        mixed = torch.cat([x[:size // 2], x[size:size + size - size // 2]])  # other images in the second half
        shuffled, other = run(x[:size][order]), run(mixed)
        for name in layers:
            assert torch.equal(shuffled[name], first[name][order]), (size, name)
            assert torch.equal(other[name][:size // 2], first[name][:size // 2]), (size, name)


def test_histogram_bins_equal_bucketize():
    edges = HIST_EDGES
    up, down = torch.full_like(edges, 1e30), torch.full_like(edges, -1e30)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -1e-45, 3e38, -3e38])
    values = torch.cat([edges, torch.nextafter(edges, up), torch.nextafter(edges, down), special,
                        torch.randn(20000, generator=torch.Generator().manual_seed(0)) * 30])
    assert values.numel() > 8192  # the exponent path, not bucketize itself
    assert torch.equal(hist_bins(values), torch.bucketize(values, edges, right=True))


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


def test_mobilenet_bf16_topk_equals_float32(monkeypatch):
    # MobileNetV2's bf16 errors are large enough for the pilot to decline bf16: force the bf16 path through.
    monkeypatch.setattr(_certify, "PILOT_LIMIT", float("inf"))
    spec = load("torchvision:mobilenet_v2@IMAGENET1K_V1")
    spec = dataclasses.replace(spec, input_size=(64, 64), resize=None)
    crops = _photo_crops()
    options = dict(k=4, batch_size=8, shard_size=16, stats=False)
    layers = ["features.2", "features.5.conv.2"]
    exact = analysis.scan(spec, crops, layers, units="0-23", **options)
    fast = analysis.scan(spec, crops, layers, units="0-23", precision="bf16", **options)
    _same_topk(fast.topk, exact.topk)
    assert "declined" not in fast.bf16


@needs_fashion
def test_bf16_scan_resumes_with_its_kept_bands(fashion_pair, tmp_path):
    """A bf16 scan stopped after its first shard resumes from the checkpoint (candidates and kept bands) and ends
    as the uninterrupted one: the same exact top-k and the same certificate. A checkpoint of another format is
    refused by name."""
    spec, fashion, options, layers, exact = fashion_pair
    whole = analysis.scan(spec, fashion, layers, precision="bf16", **options)
    path = tmp_path / "scan.ckpt"

    def stop(done: int, total: int) -> None:
        if done >= 150:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.scan(spec, fashion, layers, precision="bf16", checkpoint=path, progress=stop, **options)
    saved = torch.load(path, weights_only=True)
    assert saved["done"] == 1 and saved["states"]["candidates"]["conv1"]["band_open"]
    seen = []
    resumed = analysis.scan(spec, fashion, layers, precision="bf16", checkpoint=path,
                            progress=lambda done, total: seen.append(done), **options)
    assert seen[0] == 128
    _same_topk(resumed.topk, exact.topk)
    assert resumed.bf16 == whole.bf16
    saved["format"] = "convscope-scan/1"
    torch.save(saved, path)
    with pytest.raises(CheckpointError, match="another version"):
        analysis.scan(spec, fashion, layers, precision="bf16", checkpoint=path, **options)
