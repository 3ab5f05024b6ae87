"""What a build stores: the plan, every result with its recipe, fixed render chunks, and room for later stages."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.atlas import KINDS, Atlas, Output, Stage, build, check
from convscope.atlas.stages import STAGES
from convscope.cli import main


def test_the_tiny_atlas_holds_every_stage_with_recipes(tiny_atlas):
    report = check(tiny_atlas)
    assert report.ok and not report.warnings, report.lines()
    with Atlas(tiny_atlas, readonly=True) as atlas:
        assert atlas.model()["source"] == "convscope:fashion-cnn"
        assert [c["label"] for c in atlas.checkpoints()] == ["convscope:small-cnn", "epoch 10"]
        layers = {row["name"]: row for row in atlas.layers()}
        assert layers["conv2"]["shape"] == [64, 11, 11] and layers["conv2"]["receptive_field"]["size"] == [8, 8]
        assert [row["name"] for row in atlas.layers(selected=True)] == ["conv1", "conv2"]
        assert atlas.plan()[:5] == [("conv1", 0, 0, 0), ("conv1", 1, 0, 1), ("conv1", 2, 0, 2), ("conv1", 3, 1, 0),
                                    ("conv1", 4, 1, 1)]
        counts: dict[str, int] = {}
        for result in atlas.results():
            counts[result.kind] = counts.get(result.kind, 0) + 1
            assert result.recipe.get("kind") and result.recipe.get("versions"), (result.kind, result.recipe)
            for path in result.images.values():
                assert path.startswith("files/") and (tiny_atlas / path).is_file()
        assert counts == {"dataset_image": 12, "class_model": 10, "featvis": 10, "filter": 5, "evolution": 10,
                          "topk": 10, "purity": 10, "stats": 10, "trust": 10, "layer_stats": 2, "prediction": 12,
                          "tsne": 1, "probe": 2}
        vis = atlas.result("featvis", "conv2", 4)
        assert vis.payload["chunk"] == [3, 4] and vis.payload["item"] == 1
        assert vis.recipe["params"]["objective"] == "conv2:[3, 4]" and vis.recipe["params"]["steps"] == 6
        assert vis.payload["value"] > vis.payload["start_value"]  # the render raised its objective
        # the model is the strip's last checkpoint: that frame is its render (reused, not rendered again)
        assert atlas.result("evolution", "conv2", 4).payload["values"][-1] == vis.payload["value"]
        strip = atlas.result("evolution", "conv1", 0)
        assert strip.payload["labels"] == ["convscope:small-cnn", "epoch 10"]
        assert len(atlas.result("class_model", "", 7).payload["name"]) > 0
        assert set(KINDS) >= {r.kind for r in atlas.results()}
        top = atlas.result("topk", "conv2", 2)
        assert top.payload["by"] == "max" and len(top.payload["examples"]) == 4
        assert sorted(top.images) == sorted(f"{role}:{i}" for role in ("image", "patch", "projection") for i in range(4))
        assert "projection:0" not in atlas.result("topk", "conv1", 2).images  # no rectifier below conv1 to guide
        values = [e["value"] for e in top.payload["examples"]]
        assert values == sorted(values, reverse=True)
        trust = atlas.result("trust", "conv2", 2).payload
        assert trust["best_dataset_value"] == values[0] and trust["by"] == "max"
        # read before its ReLU, every conv unit still has a ratio: its spatial max fires on some image
        assert all(r.payload["ratio"] is not None and r.payload["ratio"] > 0 for r in atlas.results("trust"))
        stats = atlas.result("stats", "conv2", 2).payload
        assert stats["inputs"] == 96 and sum(stats["histogram"]["counts"]) == 96
        assert atlas.result("layer_stats", "conv2", -1).payload["units"] == 5
        sample = sorted(r.unit for r in atlas.results("dataset_image"))
        grid = atlas.result("tsne").payload
        assert grid["layer"] == "fc2:input" and sorted(i for i in grid["cells"] if i is not None) == sample
        for row in atlas.results("probe"):
            assert row.payload["train_size"] + row.payload["test_size"] == 200
            assert row.payload["chance"] < row.payload["accuracy"] <= 1
        first = atlas.result("prediction", "", sample[0]).payload
        assert len(first["top"]) == 5 and first["top"][0]["probability"] >= first["top"][1]["probability"]
        assert atlas.meta()["pinned"] == {"precision:class_model": "float32", "precision:featvis:conv1": "float32",
                                          "precision:featvis:conv2": "float32"}  # too small for bf16 to pay


def test_the_trust_figure_reads_the_stored_picture(tiny_atlas):
    """The render's value in the trust figure is the unit's spatial max on the PNG the viewer shows, recomputed
    here independently: the plain model on the picture's pixels, no hooks, no working copy."""
    from convscope import load

    spec = load("convscope:fashion-cnn")
    with Atlas(tiny_atlas, readonly=True) as atlas:
        for layer, unit in (("conv1", 3), ("conv2", 4)):
            path = tiny_atlas / atlas.result("featvis", layer, unit).images["image"]
            pixels = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255)[None, None]
            x = spec.normalize(pixels)
            with torch.no_grad():
                a = spec.module.relu1(spec.module.conv1(x)) if layer == "conv2" else None
                out = spec.module.conv2(spec.module.pool1(a)) if layer == "conv2" else spec.module.conv1(x)
            expected = float(out[0, unit].max())
            got = atlas.result("trust", layer, unit).payload["render_value"]
            assert abs(got - expected) <= 1e-5 * max(1.0, abs(expected)), (layer, unit, got, expected)


def test_the_trust_ratio_is_never_a_division_by_about_zero():
    from convscope.atlas._analysis import RATIO_MAX, trust_ratio

    rng = np.random.default_rng(0)
    for render, best in [(2.0, 0.0), (2.0, -0.5), (-1.0, -3.0), (2.0, 1e-9), (0.0, 0.0), *rng.normal(size=(200, 2))]:
        ratio, why = trust_ratio(float(render), float(best))
        assert (ratio is None) == (why is not None)
        if ratio is None:
            assert best <= 0 or abs(render) > RATIO_MAX * best
        else:
            assert best > 0 and abs(ratio) <= RATIO_MAX and ratio * best == pytest.approx(render)
    assert trust_ratio(2.0, 0.0)[1] == "no dataset image makes the unit fire"
    assert "too close to zero" in trust_ratio(2.0, 1e-9)[1]


def test_a_unit_renders_the_same_in_its_chunk_as_in_the_atlas(tiny_atlas, tiny_config):
    from convscope import load
    from convscope.featvis import channel, render

    spec = load(tiny_config.model)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        vis = render(spec, channel("conv1", [3, 4]), steps=tiny_config.steps, seed=tiny_config.seed)
    finally:
        torch.set_num_threads(threads)
    with Atlas(tiny_atlas, readonly=True) as atlas:
        stored = Image.open(tiny_atlas / atlas.result("featvis", "conv1", 4).images["image"])
    assert np.array_equal(np.asarray(vis.image(1)), np.asarray(stored))


def test_a_units_picture_does_not_depend_on_how_many_units_the_atlas_covers(tiny_atlas, tiny_config, tmp_path):
    """--units-per-layer 4 instead of 5: unit 3 renders alone in its chunk instead of beside unit 4, at the same
    position (its chunk is unit // chunk, its item unit % chunk), and its picture is the same bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        build(replace(tiny_config, units=4, stages=("featvis",)), tmp_path / "four", device="cpu")
    finally:
        torch.set_num_threads(threads)
    with Atlas(tiny_atlas, readonly=True) as five, Atlas(tmp_path / "four", readonly=True) as four:
        assert four.result("featvis", "conv2", 3).payload["chunk"] == [3]
        assert five.result("featvis", "conv2", 3).payload["chunk"] == [3, 4]
        for layer in ("conv1", "conv2"):
            for unit in range(4):
                path = five.result("featvis", layer, unit).images["image"]
                assert four.result("featvis", layer, unit).images["image"] == path
                assert (tmp_path / "four" / path).read_bytes() == (tiny_atlas / path).read_bytes(), (layer, unit)


class _Curvature(Stage):
    """A stage the viewer has never heard of: registered, it runs on an existing atlas and only its work is done."""

    name = kind = "curvature"
    level = "layer"

    def wanted(self, ctx):
        return [(row["name"], -1) for row in ctx.atlas.layers(selected=True)]

    def run(self, ctx, todo):
        for layer, unit in todo:
            yield Output("curvature", layer, unit, {"value": 0.5 + 0.1 * len(layer)},
                         {"kind": "fake", "model": {}, "params": {}, "versions": {"x": "1"}})


def test_a_new_stage_plugs_in_and_resumes_only_its_own_work(atlas_copy, tiny_config, monkeypatch):
    monkeypatch.setitem(STAGES, "curvature", _Curvature)
    report = build(tiny_config, atlas_copy, device="cpu")
    assert report.stored["curvature"] == 2 and sum(report.stored.values()) == 2  # nothing else was redone
    assert report.already["featvis"] == 10 and report.already["scan"] == 10 and report.already["probe"] == 2
    with Atlas(atlas_copy, readonly=True) as atlas:
        assert atlas.result("curvature", "conv1", -1).payload["value"] == 1.0


def test_the_cli_builds_checks_and_refuses_clearly(atlas_copy, tmp_path, capsys):
    assert main(["atlas", "check", str(atlas_copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (atlas_copy / "files/featvis/conv1/0.png").unlink()
    assert main(["atlas", "check", str(atlas_copy)]) == 1
    assert "files/featvis/conv1/0.png is missing" in capsys.readouterr().out
    assert main(["atlas", "build", "convscope:fashion-cnn", "-o", str(tmp_path / "r"), "--address", "h:1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an address is for --engine ray" in err[0]
    assert main(["atlas", "build", "convscope:fashion-cnn", "-o", str(tmp_path / "l"), "--layers", "conv3"]) == 2
    assert "layer 'conv3' is not a layer of 'convscope:fashion-cnn'. Did you mean" in capsys.readouterr().err
    assert main(["atlas", "check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
