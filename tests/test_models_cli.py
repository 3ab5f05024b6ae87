"""`convscope models`, `predict`, `evaluate` through `convscope.cli.main`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from convscope.cli import main


def test_models_lists_builtins_and_torchvision(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("convscope:fashion-cnn", "convscope:small-cnn", "convscope:small-cnn-s2", "convscope:cnn4"):
        assert name in out
    assert "torchvision:mobilenet_v2" in out and "@IMAGENET1K_V1" in out and "timm" in out
    assert main(["models", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    tv = {entry["name"]: entry["weights"] for entry in listing["torchvision"]}
    assert "IMAGENET1K_V1" in tv["torchvision:resnet18"] and "torchvision:fasterrcnn_resnet50_fpn" not in tv


def test_evaluate_json_on_an_npz(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
             labels=rng.integers(0, 10, 30))
    assert main(["evaluate", "convscope:small-cnn", "--data", str(tmp_path / "d.npz"), "--json", "--limit", "20",
                 "--batch-size", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["count"] == 20 and 0 <= report["top1"] <= report["top5"] <= 1
    assert set(report["per_class"]) == {str(i) for i in range(10)}
    assert main(["evaluate", "convscope:small-cnn", "--data", str(tmp_path / "d.npz")]) == 0
    text = capsys.readouterr().out
    assert "top-1 accuracy" in text and "per class" in text


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["predict", "convscope:small-cnn", str(tmp_path / "missing.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("convscope: error:") and "missing.png" in err and "\n" not in err
    assert main(["evaluate", "torchvision:resnet181", "--data", "fashion-mnist"]) == 2
    assert "resnet18" in capsys.readouterr().err
    assert main(["evaluate", "convscope:small-cnn", "--data", str(tmp_path / "nowhere")]) == 2
    assert "neither a known name" in capsys.readouterr().err


@pytest.mark.slow
def test_predict_mobilenet_v2_says_chelsea_is_a_cat(tmp_path, capsys):
    from skimage import data

    path = tmp_path / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    assert main(["predict", "torchvision:mobilenet_v2@IMAGENET1K_V1", str(path), "--top", "3"]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[1]
    assert any(cat in first for cat in ("tabby", "tiger cat", "Egyptian cat")), out
    assert main(["predict", "torchvision:mobilenet_v2@IMAGENET1K_V1", str(path), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["top"]
    assert top[0]["name"] in ("tabby", "tiger cat", "Egyptian cat") and top[0]["prob"] > 0.3
    assert sum(item["name"] in ("tabby", "tiger cat", "Egyptian cat") for item in top[:3]) == 3
