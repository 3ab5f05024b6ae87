"""A scan resumed from its checkpoint, or restored whole from a finished one, gives the same result AND the same
pictures as an uninterrupted scan: images, receptive-field patches and projections. The projections are computed
after the scan; they must depend on the examples and the network only, not on whether this process ran the model
before (a restored scan never runs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from convscope import analysis, data
from convscope.models import load

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")]

LAYERS = ["conv1", "conv2"]
OPTIONS = dict(k=4, by="mean", limit=256, batch_size=64, shard_size=128, units={"conv1": [2, 3], "conv2": [5, 12]})
UNITS = [("conv1", 2), ("conv1", 3), ("conv2", 5), ("conv2", 12)]
METHODS = ("guided", "deconvnet")  # the atlas's order


def _pictures(topk: analysis.TopK) -> dict:
    return {unit: topk.unit(*unit, projections=METHODS) for unit in UNITS}


def test_resumed_and_restored_scans_draw_the_same_projections(tmp_path):
    fashion = data.resolve("fashion-mnist")
    path = tmp_path / "scan.ckpt"
    # Each run gets its own model object, as a new process would: no state shared through the model.
    uninterrupted = analysis.scan(load("convscope:fashion-cnn"), fashion, LAYERS, **OPTIONS).topk

    def stop_after_first_shard(done: int, total: int) -> None:
        if done >= 128:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        analysis.scan(load("convscope:fashion-cnn"), fashion, LAYERS, checkpoint=path,
                      progress=stop_after_first_shard, **OPTIONS)
    resumed = analysis.scan(load("convscope:fashion-cnn"), fashion, LAYERS, checkpoint=path, **OPTIONS).topk
    # The checkpoint is now finished: this scan only loads it, its model never runs before the pictures.
    restored = analysis.scan(load("convscope:fashion-cnn"), fashion, LAYERS, checkpoint=path, **OPTIONS).topk
    want = _pictures(uninterrupted)
    # Nothing in front of conv1 is a rectifier: both rules are refused there; conv2 (after a ReLU) has both.
    assert all(not want[u].projections for u in UNITS if u[0] == "conv1")
    assert all(set(want[u].projections) == set(METHODS) for u in UNITS if u[0] == "conv2")
    for got_topk in (resumed, restored):
        assert got_topk.to_dict()["layers"] == uninterrupted.to_dict()["layers"]
        got = _pictures(got_topk)
        for unit in UNITS:
            a, b = want[unit], got[unit]
            assert a.records == b.records and a.boxes == b.boxes, unit
            assert torch.equal(a.pixels, b.pixels) and torch.equal(a.patches, b.patches), unit
            assert set(a.projections) == set(b.projections), unit
            for method in a.projections:
                assert torch.equal(a.projections[method], b.projections[method]), (unit, method)


def test_projection_equals_guided_backprop_of_the_unit_at_its_position():
    # Independent of the scan's bookkeeping: each example's projection is attribution.guided_backprop of
    # LAYER:CHANNEL@ROW,COL on that one image, cropped to the receptive field's box.
    from convscope import attribution
    from convscope.analysis._examples import crop

    spec = load("convscope:fashion-cnn")
    fashion = data.resolve("fashion-mnist")
    topk = analysis.topk(spec, fashion, ["conv2"], k=3, limit=64, units="5")
    pictures = topk.unit("conv2", 5, projections=("guided",))
    for i, record in enumerate(pictures.records):
        x = next(iter(data.batches(fashion, spec, 1, order=[record["index"]]))).inputs
        target = f"conv2:5@{record['row']},{record['col']}"
        grad = attribution.guided_backprop(spec, x, target=target).attributions
        expected = crop(grad, [pictures.boxes[i]])[0][0]
        assert torch.allclose(pictures.projections["guided"][i], expected, rtol=1e-5, atol=1e-7), record
