"""The dataset scan equals a brute force over all stored activations: top-k (ties by index, positions), statistics,
histograms, dead units; resume and merges change nothing; bad files are skipped and reported."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from convscope import analysis, data, hooks
from convscope.analysis._stats_state import HIST_EDGES
from convscope.analysis._topk_state import TopKCollector
from convscope.errors import ConvscopeError, OptionError, UnitOutOfRangeError
from convscope.models import load

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")]

LAYERS = ["conv1", "conv2", "fc1"]
N = 300


@pytest.fixture(scope="module")
def spec():
    return load("convscope:fashion-cnn")


@pytest.fixture(scope="module")
def fashion():
    return data.resolve("fashion-mnist")


def brute_force(spec, dataset, layers, n, batch_size):
    """Every activation of the first n items, stored, from the same batches the scan runs."""
    stored = {name: [] for name in layers}
    labels = []
    with hooks.frozen(spec.module) as net, torch.inference_mode(), hooks.capture(net, layers) as cap:
        for batch in data.batches(dataset, spec, batch_size, limit=n):
            net(batch.inputs)
            for name in layers:
                stored[name].append(cap[name].clone())
            labels.append(batch.labels)
    return {name: torch.cat(parts) for name, parts in stored.items()}, torch.cat(labels)


def expected_topk(acts: torch.Tensor, k: int, by: str):
    """Sort every unit's per-input values with Python's sort on (-value, index): no torch.topk involved."""
    flat = acts.flatten(2) if acts.ndim == 4 else acts[..., None]
    score = flat.amax(2) if by == "max" else flat.sum(2) / flat.shape[2]
    out = []
    for unit in range(acts.shape[1]):
        column = score[:, unit].tolist()
        order = sorted(range(len(column)), key=lambda i: (-column[i], i))[:k]
        rows = []
        for i in order:
            pos = int(flat[i, unit].argmax()) if acts.ndim == 4 else -1  # first max, row-major
            width = acts.shape[3] if acts.ndim == 4 else 1
            rows.append((column[i], i, pos // width if pos >= 0 else -1, pos % width if pos >= 0 else -1))
        out.append(rows)
    return out


@pytest.fixture(scope="module")
def scanned(spec, fashion):
    before = torch.get_num_threads()  # module fixtures run before the one_thread fixture: pin here too
    torch.set_num_threads(1)
    try:
        return analysis.scan(spec, fashion, LAYERS, k=9, limit=N, batch_size=64, shard_size=128)
    finally:
        torch.set_num_threads(before)


def test_topk_and_stats_equal_brute_force(spec, fashion, scanned):
    acts, labels = brute_force(spec, fashion, LAYERS, N, 64)
    for name in LAYERS:
        layer = scanned.topk[name]
        want = expected_topk(acts[name], 9, "max")
        got = [list(zip(layer.values[u].tolist(), layer.indices[u].tolist(), layer.rows[u].tolist(),
                        layer.cols[u].tolist())) for u in range(len(layer.channels))]
        assert got == want, name
        assert torch.equal(layer.labels, labels[layer.indices])
        a = acts[name].double()
        flat = a.flatten(2) if a.ndim == 4 else a[..., None]
        s = scanned.stats[name]
        values = flat.transpose(0, 1).reshape(a.shape[1], -1)
        assert torch.allclose(s.mean, values.mean(1), rtol=1e-6, atol=1e-7)
        assert torch.allclose(s.std, values.std(1, correction=0), rtol=1e-5, atol=1e-6)
        peak = acts[name].flatten(2).amax(2) if acts[name].ndim == 4 else acts[name]
        assert torch.equal(s.max, peak.amax(0))
        assert torch.equal(s.active, (peak > 0).sum(0))
        assert s.dead.tolist() == (peak.amax(0) <= 0).tolist()
        bins = np.searchsorted(HIST_EDGES.numpy(), peak.numpy(), side="right")  # independent of torch.bucketize
        hist = np.stack([np.bincount(bins[:, u], minlength=len(HIST_EDGES) + 1) for u in range(peak.shape[1])])
        assert np.array_equal(s.hist.numpy(), hist)
        assert int(s.hist.sum(1).unique()) == N
    assert scanned.items == N and not scanned.skipped


def test_by_mean_and_unit_subset(spec, fashion):
    result = analysis.scan(spec, fashion, ["conv2"], k=5, by="mean", units="3,7-9", limit=200, stats=False)
    acts, _ = brute_force(spec, fashion, ["conv2"], 200, 64)
    layer = result.topk["conv2"]
    assert layer.channels == (3, 7, 8, 9)
    want = expected_topk(acts["conv2"], 5, "mean")
    for u, channel in enumerate(layer.channels):
        assert list(zip(layer.values[u].tolist(), layer.indices[u].tolist())) == [w[:2] for w in want[channel]]
    assert result.stats is None


def test_ties_are_broken_by_dataset_index():
    # 40 images in 4 distinct kinds: every value ties 10 times; a one-conv net with a ReLU makes zeros tie too.
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 255, size=(4, 8, 8), dtype=np.uint8)
    order = rng.permutation(np.repeat(np.arange(4), 10))
    dataset = data.ArrayDataset(kinds[order], order)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU())
    spec = dataclasses.replace(load(net), input_size=(8, 8))
    result = analysis.scan(spec, dataset, ["1"], k=12, batch_size=7, shard_size=14)
    with torch.inference_mode():
        acts = net(torch.from_numpy(kinds[order]).float()[:, None] / 255)
    want = expected_topk(acts, 12, "max")
    layer = result.topk["1"]
    for u in range(6):
        assert list(zip(layer.values[u].tolist(), layer.indices[u].tolist())) == [w[:2] for w in want[u]]


def test_merge_is_a_topk_of_topks(spec, fashion):
    collector = TopKCollector(4)
    a = analysis.scan(spec, fashion, ["conv1"], k=4, limit=64, stats=False)
    b = analysis.scan(spec, data.Subset(fashion, range(64, 128)), ["conv1"], k=4, stats=False)
    both = analysis.scan(spec, fashion, ["conv1"], k=4, limit=128, stats=False)
    state_a = {"conv1": _state(a.topk["conv1"])}
    state_b = {"conv1": _state(b.topk["conv1"], offset=64)}
    for merged in (collector.merge(state_a, state_b)["conv1"], collector.merge(state_b, state_a)["conv1"]):
        assert torch.equal(merged["values"], both.topk["conv1"].values)
        assert torch.equal(merged["indices"], both.topk["conv1"].indices)


def _state(layer, offset=0):
    from convscope.analysis._collect import sort_keys

    indices = layer.indices + offset
    return {"values": layer.values, "indices": indices, "rows": layer.rows, "cols": layer.cols, "labels": layer.labels,
            "batch_sizes": torch.zeros_like(indices), "floor": torch.full((len(layer.channels),), float("-inf")),
            "keys": sort_keys(layer.values, indices)}


def test_resume_after_interruption_equals_uninterrupted(spec, fashion, tmp_path, scanned):
    path = tmp_path / "scan.ckpt"
    calls = []

    def stop_midway(done: int, total: int) -> None:
        calls.append(done)
        if done >= 150:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.scan(spec, fashion, LAYERS, k=9, limit=N, batch_size=64, shard_size=128, checkpoint=path,
                      progress=stop_midway)
    assert path.exists() and hooks.hook_count(spec.module) == 0
    seen = []
    resumed = analysis.scan(spec, fashion, LAYERS, k=9, limit=N, batch_size=64, shard_size=128, checkpoint=path,
                            progress=lambda done, total: seen.append(done))
    assert seen[0] == 128  # the first shard came from the checkpoint
    assert resumed.to_dict() == scanned.to_dict()
    with pytest.raises(ConvscopeError, match="different scan"):
        analysis.scan(spec, fashion, LAYERS, k=5, limit=N, batch_size=64, shard_size=128, checkpoint=path)


def test_bad_image_is_reported_and_skipped(tmp_path, spec):
    from PIL import Image

    rng = np.random.default_rng(1)
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "b" / "3.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="3.png"):
        result = analysis.scan(spec, str(tmp_path), ["conv2"], k=3, batch_size=4, shard_size=4)
    assert result.items == 12 and len(result.skipped) == 1
    assert result.skipped[0][0].endswith("b/3.png")
    assert result.summary()["scanned"] == 11
    assert int(result.stats["conv2"].hist[0].sum()) == 11
    assert 9 not in result.topk["conv2"].indices.tolist()


def test_round_trip_and_index(scanned):
    again = analysis.TopK.from_dict(scanned.topk.to_dict())
    for name in LAYERS:
        for field in ("values", "indices", "labels", "rows", "cols"):
            assert torch.equal(getattr(again[name], field), getattr(scanned.topk[name], field))
    stats = analysis.Stats.from_dict(scanned.stats.to_dict())
    assert torch.equal(stats["conv2"].std, scanned.stats["conv2"].std)
    assert analysis.Scan.from_dict(scanned.to_dict()).to_dict() == scanned.to_dict()
    index = scanned.topk.index()["conv2"]["5"]
    assert len(index["examples"]) == 9 and set(index["examples"][0]) == {"index", "source", "label", "class",
                                                                          "value", "row", "col"}
    counts = index["purity"]["histogram"]
    assert sum(counts.values()) == 9 and index["purity"]["majority"] == next(iter(counts))


def test_bad_options_raise_one_line(spec, fashion):
    with pytest.raises(OptionError, match="k must be"):
        analysis.scan(spec, fashion, ["conv1"], k=0)
    with pytest.raises(UnitOutOfRangeError, match="conv1:40"):
        analysis.scan(spec, fashion, ["conv1"], units="40")
    with pytest.raises(ConvscopeError, match="conv9"):
        analysis.scan(spec, fashion, ["conv9"])
    assert hooks.hook_count(spec.module) == 0


def test_all_layers_means_conv_and_linear_outputs(spec, fashion):
    result = analysis.stats(spec, fashion, "all", limit=64)
    assert list(result.layers) == ["conv1", "conv2", "fc1", "fc2"]
    assert result.exact == ("mean", "std", "max", "active", "hist", "dead")
