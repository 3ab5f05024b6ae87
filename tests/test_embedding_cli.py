"""`convscope tsne` and `convscope probe` through `convscope.cli.main`: files written and loadable, JSON, tables,
one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convscope.analysis import TSNE, Probes
from convscope.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def npz(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 14)
    images = rng.integers(0, 120, (42, 28, 28), dtype=np.uint8)
    images[labels == 1, 8:20, 8:20] = 255  # a bright square for class 1, a bar for class 2
    images[labels == 2, :, 12:16] = 255
    path = tmp_path / "toy.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["dark", "square", "bar"]))
    return path


def test_tsne_writes_a_picture_with_coordinates_beside_it(tmp_path, npz, capsys):
    out = tmp_path / "t.png"
    assert main(["tsne", "convscope:fashion-cnn", "--data", str(npz), "--limit", "36", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["items"]) == 36 and report["layer"] == "fc2:input" and report["grid"] == [6, 6]
    assert {item["class"] for item in report["items"]} == {"dark", "square", "bar"}
    saved = TSNE.load(out)
    assert saved.embedding.shape == (36, 2) and [i["x"] for i in report["items"]] == saved.embedding[:, 0].tolist()
    assert Image.open(out).size[0] > 100 and (tmp_path / "t.json").is_file()
    assert main(["tsne", "convscope:fashion-cnn", "--data", str(npz), "--limit", "20", "--scatter", "--layer",
                 "conv2", "-o", str(tmp_path / "s.png")]) == 0
    assert "t-SNE of conv2 (64 dims) on 20 items" in capsys.readouterr().out


def test_probe_prints_a_table_and_saves_a_chart(tmp_path, npz, capsys):
    assert main(["probe", "convscope:fashion-cnn", "--data", str(npz), "--layers", "input,conv2,fc2:input",
                 "-o", str(tmp_path / "p.png")]) == 0
    text = capsys.readouterr().out
    assert "held-out acc." in text and "fc2:input" in text and "chance" in text
    assert Probes.load(tmp_path / "p.png").layers == ("input", "conv2", "fc2:input")
    assert main(["probe", "convscope:fashion-cnn", "--data", str(npz), "--layers", "all", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [row["layer"] for row in report["layers"]] == ["conv1", "conv2", "fc1", "fc2"]
    assert report["n_train"] + report["n_test"] == 42 and all(0 <= r["accuracy"] <= 1 for r in report["layers"])


def test_errors_are_one_line(tmp_path, npz, capsys, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_DATA", str(tmp_path / "empty"))
    assert main(["tsne", "convscope:fashion-cnn", "--data", "photos"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convscope: error:") and "python -m convscope.data.photos" in err and "\n" not in err
    assert main(["probe", "convscope:fashion-cnn", "--data", str(npz), "--layers", "fc3"]) == 2
    err = capsys.readouterr().err.strip()
    assert "'fc3'" in err and "fc2" in err and "\n" not in err
    assert main(["tsne", "convscope:fashion-cnn", "--data", str(npz), "--limit", "4", "-o",
                 str(tmp_path / "x.png")]) == 2
    assert "at least 5 items" in capsys.readouterr().err
