"""The proven bf16 margin of a layer that reads the model input (`analysis._bound`): it bounds the real bf16 error
on every input and unit, it is only used where the layer's input is the model input on every batch, and scans that
use it stay equal to the float32 scan bit for bit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convscope import analysis, data
from convscope.analysis._bound import InputRange, first_layers, input_bounds, proven_margin
from convscope.analysis._certify import _Scores
from convscope.analysis._collect import Plan
from convscope.analysis._engine import ShardRunner, resolve_units, scan_layers
from convscope.models import load

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
FIELDS = ("values", "indices", "labels", "rows", "cols")


def _scores(spec, dataset, layers, precision, items, batch_size=64):
    plans = resolve_units(None, scan_layers(spec.module, spec.example_input(), layers))
    plan = Plan(tuple(plans), 1, "max", True, False, batch_size, items, items, precision)
    collectors = [_Scores()]
    firsts = first_layers(spec.module, plans)
    if precision == "bf16" and firsts:
        collectors.append(InputRange(firsts, [plans[0].path]))
    with ShardRunner(spec, dataset, plan, collectors) as runner:
        states = runner.run_items(range(items))["states"]
    scores = {name: torch.cat(parts) for name, parts in states["scores"].items()}
    return plans, scores, states.get("inputs", {})


@needs_fashion
def test_proven_margin_bounds_every_bf16_error_on_fashion_conv1():
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    plans, s32, _ = _scores(spec, fashion, ["conv1"], "float32", 640)
    _, s16, inputs = _scores(spec, fashion, ["conv1"], "bf16", 640)
    bound = input_bounds(spec.module, plans, inputs, spec.device)["conv1"]
    # Each input's own float32 score as t: its bf16 score must not fall below t - d, or an input that reaches t
    # in float32 could be certified out.
    margin = proven_margin(s32["conv1"], bound)
    assert bool((s16["conv1"] >= s32["conv1"] - margin).all())
    assert bool((s32["conv1"] != s16["conv1"]).any())  # bf16 does differ: the bound is doing work
    # ... and it is tighter than the assumed 2^-5 |t| at the units' top responses (why it pays).
    top = s32["conv1"].amax(0)
    assert bool((proven_margin(top, bound) < 2.0 ** -5 * top.abs()).all())


class _Scaled(nn.Module):
    def forward(self, x):
        return x * 0.75 + 0.1


def test_no_bound_unless_the_layer_reads_the_model_input():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, size=(64, 10, 10), dtype=np.uint8)
    dataset = data.ArrayDataset(images, np.zeros(64, dtype=np.int64))
    torch.manual_seed(0)
    options = dict(k=3, batch_size=16, shard_size=32, stats=False)
    direct = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    shifted = nn.Sequential(_Scaled(), nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Conv2d(6, 4, 3))
    for net, first, proven in ((direct, "0", True), (shifted, "1", False)):
        spec = dataclasses.replace(load(net), input_size=(10, 10))
        layers = [first, str(int(first) + 2)]
        exact = analysis.scan(spec, dataset, layers, **options)
        fast = analysis.scan(spec, dataset, layers, precision="bf16", **options)
        for name in layers:
            for field in FIELDS:
                assert torch.equal(getattr(fast.topk[name], field), getattr(exact.topk[name], field)), (name, field)
        assert ("proven_margin" in fast.bf16) == proven, fast.bf16
        if proven:
            assert set(fast.bf16["proven_margin"]) == {first}  # never a deeper layer


@needs_fashion
def test_fashion_bf16_scan_uses_the_proven_margin_and_stays_exact():
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    options = dict(k=9, limit=512, batch_size=64, shard_size=128, stats=False)
    exact = analysis.scan(spec, fashion, ["conv1", "conv2"], **options)
    fast = analysis.scan(spec, fashion, ["conv1", "conv2"], precision="bf16", **options)
    assert fast.topk.to_dict()["layers"] == exact.topk.to_dict()["layers"]
    assert set(fast.bf16["proven_margin"]) == {"conv1"} and fast.bf16["proven_margin"]["conv1"] < 2.0 ** -5


@needs_fashion
def test_no_bound_for_spatial_means():
    # A spatial mean's bfloat16 sum is rounded once more than the bound covers: the assumed margin stays.
    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    options = dict(k=5, limit=256, batch_size=64, shard_size=128, stats=False, by="mean")
    exact = analysis.scan(spec, fashion, ["conv1"], **options)
    fast = analysis.scan(spec, fashion, ["conv1"], precision="bf16", **options)
    assert fast.topk.to_dict()["layers"] == exact.topk.to_dict()["layers"]
    assert "proven_margin" not in fast.bf16
