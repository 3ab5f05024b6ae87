"""Display choices: the class model's contrast stretch (Simonyan et al.'s display), recorded in recipe and caption;
captions wrap instead of being cut off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from convscope import load
from convscope.cli import main
from convscope.featvis import class_model
from convscope.render.core import label, normalize, stretch_gain, to_pil, wrap_text

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stretch_centres_the_mean_keeps_order_and_fills_the_range():
    x = 0.5 + 0.02 * torch.randn(3, 20, 20, generator=torch.Generator().manual_seed(0))
    out = normalize(x, "stretch")
    flat, raw = out.ravel(), x.numpy().ravel()
    assert np.all(np.diff(flat[np.argsort(raw)]) >= 0)  # monotone: the picture is the same picture
    assert flat.max() - flat.min() > 0.95 and np.ptp(raw) < 0.2
    assert normalize(torch.full((1, 4, 4), 0.3), "stretch").tolist() == np.full((1, 4, 4), 0.5).tolist()
    symmetric = torch.cat([x, 1 - x])  # mean 0.5: deviations above and below it are stretched alike
    both = normalize(symmetric, "stretch")
    assert np.allclose(both[:3] + both[3:], 1.0, atol=1e-6) and stretch_gain(symmetric) > 1


def test_the_papers_class_model_is_shown_stretched_and_says_so(tmp_path, capsys):
    spec = load("convscope:small-cnn")
    paper = class_model(spec, 1, param="pixel", optimizer="ascent", steps=6)
    raw = paper.images[0]
    assert float(raw.max() - raw.min()) < 0.5  # the near-uniform grey picture of the issue
    assert paper.recipe.params["display"] == "stretch"
    shown = np.asarray(paper.image(0), dtype=np.float32) / 255
    assert float(np.percentile(shown, 99) - np.percentile(shown, 1)) > 0.8
    assert np.array_equal(np.asarray(paper.image(0)), np.asarray(to_pil(raw, norm="stretch")))
    adam = class_model(spec, 1, param="pixel", optimizer="adam", steps=6)
    assert adam.recipe.params["display"] == "none"
    assert np.array_equal(np.asarray(adam.image(0)), np.asarray(to_pil(adam.images[0])))
    out = tmp_path / "cm.png"
    assert main(["class-model", "convscope:small-cnn", "--target", "1", "--param", "pixel", "--optimizer", "ascent",
                 "--steps", "6", "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipe"]["params"]["display"] == "stretch"
    assert json.loads(out.with_suffix(".json").read_text())["params"]["display"] == "stretch"


def test_long_captions_wrap_within_the_picture():
    font = ImageFont.load_default(size=10)
    text = "T-shirt/top 2.52, contrast x7.6 around the mean"
    lines = wrap_text(text, 10, 90, break_words=False)
    assert len(lines) > 1 and " ".join(lines) == text
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    assert all(draw.textlength(line, font=font) <= 90 for line in lines)
    tile = Image.new("RGB", (96, 96))
    assert label(tile, text, size=10, wrap=True).height > label(tile, "short", size=10, wrap=True).height
