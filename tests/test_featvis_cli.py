"""The featvis commands: visualize (one unit, many units), class-model (noise and class-mean start), dream; errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convscope.cli import main
from convscope.cli._featvis import parse_units
from convscope.errors import UnitSyntaxError

MODEL = "convscope:small-cnn"  # untrained, seeded: 1 x 28 x 28


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_visualize_units_renders_a_batched_grid_that_raises_every_unit(tmp_path, capsys):
    out = tmp_path / "grid.png"
    report = run_json(capsys, ["visualize", MODEL, "--layer", "conv2", "--units", "0-5", "--steps", "24", "--transforms", "none",
                               "-o", str(out), "--json"])
    assert [item["label"] for item in report["items"]] == [f"conv2:{i}" for i in range(6)]
    assert all(item["activation"] > item["start_activation"] for item in report["items"])
    assert out.exists() and out.with_suffix(".json").exists()
    assert report["recipe"]["params"]["batch"] == 6 and report["recipe"]["params"]["seed"] == 0


def test_every_featvis_command_takes_precision_and_the_recipe_records_what_ran(tmp_path, capsys):
    from convscope.cli import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name in ("visualize", "class-model", "dream", "invert", "adversarial", "invariances", "evolution"):
        option = next(a for a in commands[name]._actions if "--precision" in a.option_strings)
        assert tuple(option.choices) == ("auto", "float32", "bf16"), name
        assert option.default == ("float32" if name == "adversarial" else "auto"), name
    report = run_json(capsys, ["visualize", MODEL, "--layer", "conv2", "--unit", "1", "--steps", "3",
                               "--precision", "bf16", "-o", str(tmp_path / "u.png"), "--json"])
    assert report["recipe"]["params"]["precision"] == "bf16"


def test_visualize_one_unit_with_octaves_and_sharpness(tmp_path, capsys):
    out = tmp_path / "one.png"
    report = run_json(capsys, ["visualize", MODEL, "--layer", "conv1", "--unit", "3", "--steps", "6",
                               "--size", "20", "--octaves", "2", "--outscale", "1.5", "--sharpness", "5",
                               "--seed", "2", "-o", str(out), "--json"])
    width, height = Image.open(out).size
    assert 96 <= width < 2 * 96 and height > width  # 30 px upscaled to the 96 px display cell, caption below
    assert report["recipe"]["params"]["octave_sizes"] == [[20, 20], [30, 30]]
    assert len(report["recipe"]["params"]["regularizers"]) == 2


def test_class_model_from_noise_and_from_the_class_mean(tmp_path, capsys):
    images = (np.random.default_rng(0).random((40, 28, 28)) * 255).astype(np.uint8)
    labels = np.arange(40) % 4
    data = tmp_path / "tiny.npz"
    np.savez(data, images=images, labels=labels)
    report = run_json(capsys, ["class-model", MODEL, "--target", "2,3", "--steps", "8", "-o",
                               str(tmp_path / "cm.png"), "--json"])
    assert len(report["items"]) == 2 and all(i["activation"] > i["start_activation"] for i in report["items"])
    report = run_json(capsys, ["class-model", MODEL, "--target", "1", "--init", "mean", "--data", str(data),
                               "--steps", "4", "-o", str(tmp_path / "mean.png"), "--json"])
    assert report["items"][0]["activation"] > report["items"][0]["start_activation"]


def test_dream_keeps_the_photo_size(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((40, 56)) * 255).astype(np.uint8)).save(photo)
    out = tmp_path / "dream.png"
    report = run_json(capsys, ["dream", MODEL, str(photo), "--layer", "conv2", "--steps", "3", "--octaves", "2",
                               "--tile", "28", "-o", str(out), "--json"])
    assert Image.open(out).size == (96, 96) or Image.open(out).size[0] >= 56
    assert report["recipe"]["params"]["tile"] == 28 and report["items"][0]["activation"] > 0


@pytest.mark.parametrize("argv,message", [
    (["visualize", MODEL, "--layer", "conv9", "--unit", "1"], "conv9"),
    (["visualize", MODEL, "--layer", "conv1", "--unit", "99"], "0..31"),
    (["visualize", MODEL, "--layer", "conv1", "--units", "5-2"], "backwards"),
    (["class-model", MODEL, "--target", "1", "--init", "mean"], "needs data"),
])
def test_errors_are_one_line_and_exit_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--steps", "1", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_parse_units():
    assert parse_units("0-3,7,2") == [0, 1, 2, 3, 7]
    with pytest.raises(UnitSyntaxError):
        parse_units("a-b")
