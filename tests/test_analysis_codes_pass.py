"""Pooled codes as one more view of a scan's pass: equal to `analysis.codes` over the same batches (the same bits),
and to a forward pass pooled by hand; top-k and statistics unchanged by them; resumed from a checkpoint unchanged;
bad files skipped; t-SNE and probes read them as they read `codes(...)`."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import image_folder

from convscope import analysis, data, hooks
from convscope.analysis.probe import probe_codes
from convscope.errors import OptionError
from convscope.models import load, spec_for_module

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.usefixtures("one_thread")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")

LAYERS = ["conv1", "conv2"]
CODE_LAYERS = ["conv2", "fc2:input", "input"]
OPTIONS = dict(k=5, limit=200, batch_size=32, shard_size=64)


@pytest.fixture(scope="module")
def fashion_scans():
    before = torch.get_num_threads()  # module fixtures run before the one_thread fixture: pin here too
    torch.set_num_threads(1)
    try:
        spec = load("convscope:fashion-cnn")
        fashion = data.resolve("fashion-mnist")
        plain = analysis.scan(spec, fashion, LAYERS, **OPTIONS)
        with_codes = analysis.scan(spec, fashion, LAYERS, codes="mean", code_layers=CODE_LAYERS, **OPTIONS)
        return spec, fashion, plain, with_codes
    finally:
        torch.set_num_threads(before)


@needs_fashion
def test_scan_codes_equal_codes_and_a_forward_pooled_by_hand(fashion_scans):
    spec, fashion, plain, scanned = fashion_scans
    alone = analysis.codes(spec, fashion, CODE_LAYERS, indices=range(200), batch_size=32)
    got = scanned.codes
    assert got.layers == tuple(CODE_LAYERS) and len(got) == 200
    for name in CODE_LAYERS:
        assert torch.equal(got.codes[name], alone.codes[name]), name
    assert torch.equal(got.indices, torch.arange(200)) and torch.equal(got.labels, alone.labels)
    assert got.sources == alone.sources and got.classes == alone.classes and got.pool == "mean"
    # By hand: the whole network run on all 200 images, conv2 averaged over space.
    x = torch.cat([b.inputs for b in data.batches(fashion, spec, 200, limit=200)])
    with torch.inference_mode(), hooks.capture(spec.module, ["conv2"]) as cap:
        spec.module.eval()(x)
    torch.testing.assert_close(got.codes["conv2"], cap["conv2"].mean((2, 3)))
    # The codes change nothing else the pass computes.
    assert scanned.topk.to_dict()["layers"] == plain.topk.to_dict()["layers"]
    assert scanned.stats.to_dict()["layers"] == plain.stats.to_dict()["layers"]
    assert plain.codes is None and "codes" not in plain.recipe.params
    assert scanned.recipe.params["codes"] == {"pool": "mean", "layers": CODE_LAYERS}


@needs_fashion
def test_probe_max_pool_and_bf16_codes(fashion_scans):
    spec, fashion, _, scanned = fashion_scans
    alone = analysis.codes(spec, fashion, CODE_LAYERS, indices=range(200), batch_size=32)
    a, b = probe_codes(scanned.codes, seed=0), probe_codes(alone, seed=0)
    assert a.accuracy == b.accuracy and a.layers == b.layers
    # In a bf16 pass the codes come from bfloat16 activations: close to float32's, and the recipe says so.
    fast = analysis.scan(spec, fashion, LAYERS, precision="bf16", codes="mean", code_layers=CODE_LAYERS, **OPTIONS)
    assert fast.codes.recipe.params["precision"] == "bf16" and scanned.codes.recipe.params["precision"] == "float32"
    for name in CODE_LAYERS:
        torch.testing.assert_close(fast.codes.codes[name], scanned.codes.codes[name], rtol=0.05, atol=0.05)
    assert fast.topk.to_dict()["layers"] == scanned.topk.to_dict()["layers"]  # the top-k stays exact
    maxed = analysis.scan(spec, fashion, ["conv1"], topk=False, stats=False, codes="max", limit=64, batch_size=32)
    assert maxed.topk is None and maxed.stats is None
    assert torch.equal(maxed.codes.codes["conv1"],
                       analysis.codes(spec, fashion, ["conv1"], pool="max", indices=range(64), batch_size=32)
                       .codes["conv1"])


@needs_fashion
def test_codes_resume_from_a_checkpoint(fashion_scans, tmp_path):
    spec, fashion, _, scanned = fashion_scans
    path = tmp_path / "scan.ckpt"
    options = dict(codes="mean", code_layers=CODE_LAYERS, checkpoint=path, **OPTIONS)

    def stop(done: int, total: int) -> None:
        if done >= 100:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.scan(spec, fashion, LAYERS, progress=stop, **options)
    resumed = analysis.scan(spec, fashion, LAYERS, **options)
    restored = analysis.scan(spec, fashion, LAYERS, **options)  # a finished checkpoint
    for result in (resumed, restored):
        assert torch.equal(result.codes.indices, scanned.codes.indices)
        for name in CODE_LAYERS:
            assert torch.equal(result.codes.codes[name], scanned.codes.codes[name]), name
    # A checkpoint of a scan without codes is another scan.
    with pytest.raises(Exception, match="different scan"):
        analysis.scan(spec, fashion, LAYERS, checkpoint=path, **OPTIONS)


def test_bad_file_is_skipped_and_bad_options_raise(tmp_path):
    image_folder(tmp_path, ("a", "b"), 3, 10, broken="b/1.png")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(180, 2))
    spec = spec_for_module(net, input_size=(10, 10))
    folder = data.ImageFolder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analysis.scan(spec, folder, ["0"], k=2, batch_size=2, codes="mean", code_layers=["2", "4:input"])
    assert len(result.codes) == 5 and len(result.skipped) == 1 and result.skipped[0][0].endswith("1.png")
    assert result.codes.indices.tolist() == [0, 1, 2, 3, 5]  # folder order: a/0..2, b/0, b/1 (broken), b/2
    assert not any(s.endswith("1.png") and "/b/" in s for s in result.codes.sources)
    assert result.codes.codes["4:input"].shape == (5, 180) and result.codes.codes["2"].shape == (5, 5)
    with pytest.raises(OptionError, match="codes"):
        analysis.scan(spec, folder, ["0"], codes="median")
