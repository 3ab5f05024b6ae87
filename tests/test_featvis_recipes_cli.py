"""The `invert`, `adversarial`, `invariances` and `evolution` commands on a small built-in model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convscope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def image(tmp_path):
    yy, xx = np.mgrid[:28, :28]
    disk = ((yy - 12) ** 2 + (xx - 15) ** 2 < 60) * 200 + xx * 2  # a smooth shape: something a TV prior allows
    path = tmp_path / "shape.png"
    Image.fromarray(disk.astype(np.uint8), "L").save(path)
    return path


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_invert_command(tmp_path, image, capsys):
    out = tmp_path / "inv.png"
    code = main(["invert", "convscope:small-cnn", str(image), "--layer", "relu2", "--steps", "30", "-o", str(out),
                 "--precision", "bf16", "--json"])
    assert code == 0
    payload = _json(capsys)
    assert payload["code_error"] < payload["initial_code_error"]  # errors measured in float32
    assert payload["recipe"]["params"]["precision"] == "bf16"
    assert out.exists() and out.with_suffix(".json").exists()
    assert json.loads(out.with_suffix(".json").read_text())["params"]["layer"] == "relu2"


def test_adversarial_command(tmp_path, image, capsys):
    out = tmp_path / "adv.png"
    code = main(["adversarial", "convscope:small-cnn", str(image), "--target", "3", "--eps", "8/255", "--steps", "5",
                 "-o", str(out), "--json"])
    assert code == 0
    payload = _json(capsys)
    assert payload["linf"] <= 8 / 255 + 1e-6
    assert len(payload["before"]) == 3 and out.exists()


def test_invariances_command(tmp_path, capsys):
    out = tmp_path / "strip.png"
    code = main(["invariances", "convscope:small-cnn", "--layer", "conv2", "--unit", "3", "--k", "2", "--steps", "8",
                 "-o", str(out), "--json"])
    assert code == 0
    payload = _json(capsys)
    assert payload["roles"] == ["steepest", "steepest", "flattest", "flattest"]
    assert Image.open(out).height > 4 * 28


def test_evolution_command(tmp_path, capsys):
    out = tmp_path / "evo.png"
    code = main(["evolution", "convscope:small-cnn", "convscope:small-cnn-s2", "--layer", "conv1", "--unit", "0",
                 "--steps", "4", "-o", str(out), "--json"])
    assert code == 0
    assert len(_json(capsys)["values"]) == 2 and out.exists()


@pytest.mark.parametrize("argv", [
    ["invert", "convscope:small-cnn", "IMAGE", "--layer", "conv9"],
    ["adversarial", "convscope:small-cnn", "IMAGE", "--eps=-1/255"],
    ["adversarial", "convscope:small-cnn", "IMAGE", "--target", "99"],
    ["invariances", "convscope:small-cnn", "--layer", "conv2", "--unit", "64", "--steps", "2"],
    ["invariances", "convscope:small-cnn", "--layer", "conv2", "--unit", "x"],
])
def test_bad_input_is_one_line_and_exit_2(argv, image, tmp_path, capsys):
    argv = [str(image) if a == "IMAGE" else a for a in argv] + ["-o", str(tmp_path / "x.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("convscope: error:") and len(err.strip().splitlines()) == 1
