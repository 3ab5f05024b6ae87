"""`convscope topk` and `convscope stats` end to end, and the per-example projections they draw."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from convscope import analysis, attribution
from convscope.cli import main
from convscope.models import load

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")]


def test_topk_command_writes_index_and_montages(tmp_path, capsys):
    out = tmp_path / "topk"
    code = main(["topk", "convscope:fashion-cnn", "--data", "fashion-mnist", "--layers", "conv2,fc1", "--units",
                 "conv2:5,conv2:9,fc1:3", "--k", "6", "--limit", "200", "-o", str(out)])
    assert code == 0
    index = json.loads((out / "index.json").read_text())
    unit = index["layers"]["conv2"]["5"]
    assert len(unit["examples"]) == 6 and set(unit["examples"][0]) == {"index", "source", "label", "class", "value",
                                                                        "row", "col"}
    assert unit["purity"]["majority"] in index["layers"]["conv2"]["5"]["purity"]["histogram"]
    assert sorted(p.name for p in (out / "conv2").glob("*.png")) == ["unit-5.png", "unit-9.png"]
    assert (out / "fc1" / "unit-3.png").exists() and index["summary"]["skipped"] == 0
    again = analysis.TopK.from_dict(json.loads((out / "topk.json").read_text()))
    assert again.examples("conv2", 5) == unit["examples"]
    assert "conv2: 2 units" in capsys.readouterr().out


def test_stats_command_prints_summary_and_writes_table(tmp_path, capsys):
    out = tmp_path / "stats"
    assert main(["stats", "convscope:fashion-cnn", "--data", "fashion-mnist", "--limit", "128", "-o", str(out),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [s["layer"] for s in summary["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    rows = list(csv.DictReader((out / "stats.csv").open()))
    assert len(rows) == 32 + 64 + 128 + 10 and set(rows[0]) == {"layer", "unit", "mean", "std", "max", "active",
                                                                 "dead"}
    assert (out / "stats.png").exists() and json.loads((out / "stats.json").read_text())["kind"] == "stats"


def test_bad_layer_is_one_line(capsys):
    assert main(["stats", "convscope:fashion-cnn", "--data", "fashion-mnist", "--layers", "conv9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "conv9" in err


def test_unit_projections_equal_the_public_position_target():
    spec = load("convscope:fashion-cnn")
    top = analysis.topk(spec, "fashion-mnist", ["conv2"], k=3, units="4", limit=64)
    unit = top.unit("conv2", 4)
    assert unit.patches.shape[-2:] == (8, 8) and unit.masks.any()
    for i, record in enumerate(unit.records):
        x = spec.normalize(unit.pixels[i:i + 1])
        for method, fn in (("deconvnet", attribution.deconvnet), ("guided", attribution.guided_backprop)):
            single = fn(spec, x, target=f"conv2:4@{record['row']},{record['col']}").attributions[0]
            top_, left, bottom, right = unit.boxes[i]
            crop = torch.zeros_like(unit.projections[method][i])
            y0, x0 = max(0, top_), max(0, left)
            crop[:, y0 - top_:min(28, bottom) - top_, x0 - left:min(28, right) - left] = \
                single[:, y0:min(28, bottom), x0:min(28, right)]
            assert torch.allclose(unit.projections[method][i], crop, atol=1e-6), method
