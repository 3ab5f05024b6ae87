"""What a build stores: the plan, every result with its recipe, fixed render chunks, and room for later stages."""

from __future__ import annotations

import json

import numpy as np
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
                          "topk": 10, "purity": 10, "stats": 10, "trust": 10, "layer_stats": 2}
        vis = atlas.result("featvis", "conv2", 4)
        assert vis.payload["chunk"] == [3, 4] and vis.payload["item"] == 1
        assert vis.recipe["params"]["objective"] == "conv2:[3, 4]" and vis.recipe["params"]["steps"] == 6
        assert vis.payload["value"] > vis.payload["start_value"]  # the render raised its objective
        strip = atlas.result("evolution", "conv1", 0)
        assert strip.payload["labels"] == ["convscope:small-cnn", "epoch 10"]
        assert len(atlas.result("class_model", "", 7).payload["name"]) > 0
        assert set(KINDS) >= {r.kind for r in atlas.results()}
        top = atlas.result("topk", "conv2", 2)
        assert top.payload["by"] == "mean" and len(top.payload["examples"]) == 4
        assert sorted(top.images) == sorted(f"{role}:{i}" for role in ("image", "patch", "projection") for i in range(4))
        assert "projection:0" not in atlas.result("topk", "conv1", 2).images  # no rectifier below conv1 to guide
        values = [e["value"] for e in top.payload["examples"]]
        assert values == sorted(values, reverse=True)
        trust = atlas.result("trust", "conv2", 2).payload
        assert trust["best_dataset_value"] == values[0] and trust["render_value"] == atlas.result(
            "featvis", "conv2", 2).payload["value"]
        stats = atlas.result("stats", "conv2", 2).payload
        assert stats["inputs"] == 96 and sum(stats["histogram"]["counts"]) == 96
        assert atlas.result("layer_stats", "conv2", -1).payload["units"] == 5


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


class _FakeProbe(Stage):
    """Stands in for a stage still to come (linear probes): writes its kind with the payload `kinds` fixes."""

    name = kind = "probe"
    level = "layer"
    needs = ("data",)

    def wanted(self, ctx):
        return [(row["name"], -1) for row in ctx.atlas.layers(selected=True)]

    def run(self, ctx, todo):
        for layer, unit in todo:
            yield Output("probe", layer, unit, {"accuracy": 0.5 + 0.1 * len(layer), "train_size": 8, "test_size": 4},
                         {"kind": "fake-probe", "model": {}, "params": {}, "versions": {"x": "1"}})


def test_a_new_stage_plugs_in_and_resumes_only_its_own_work(atlas_copy, tiny_config, monkeypatch):
    monkeypatch.setitem(STAGES, "probe", _FakeProbe)
    report = build(tiny_config, atlas_copy, device="cpu")
    assert report.stored["probe"] == 2 and sum(report.stored.values()) == 2  # nothing else was redone
    assert report.already["featvis"] == 10 and report.already["scan"] == 10
    with Atlas(atlas_copy, readonly=True) as atlas:
        assert atlas.result("probe", "conv1", -1).payload["accuracy"] == 1.0


def test_the_cli_builds_checks_and_refuses_clearly(atlas_copy, tmp_path, capsys):
    assert main(["atlas", "check", str(atlas_copy), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
    (atlas_copy / "files/featvis/conv1/0.png").unlink()
    assert main(["atlas", "check", str(atlas_copy)]) == 1
    assert "files/featvis/conv1/0.png is missing" in capsys.readouterr().out
    assert main(["atlas", "build", "convscope:fashion-cnn", "-o", str(tmp_path / "r"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--engine ray is not available yet" in err[0]
    assert main(["atlas", "build", "convscope:fashion-cnn", "-o", str(tmp_path / "l"), "--layers", "conv3"]) == 2
    assert "layer 'conv3' is not a layer of 'convscope:fashion-cnn'. Did you mean" in capsys.readouterr().err
    assert main(["atlas", "check", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
