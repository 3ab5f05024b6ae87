"""`convscope demo` runs on a plain `pip install`: the photo it needs ships with convscope, with its licence."""

from __future__ import annotations

import re
import sys
import tomllib
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convscope.demo import DemoContext

PHOTOS = files("convscope") / "_photos"


def test_the_demo_photo_needs_no_scikit_image(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # `import skimage` now fails, as on a plain install
    path = DemoContext(out=tmp_path).photo("chelsea")
    image = Image.open(path)
    assert image.mode == "RGB" and image.size == (451, 300)


def test_the_shipped_photo_is_scikit_images_chelsea():
    data = pytest.importorskip("skimage.data")
    with Image.open(PHOTOS / "chelsea.png") as shipped:
        assert np.array_equal(np.asarray(shipped), data.chelsea())


def test_every_shipped_photo_is_packaged_and_has_a_source_and_licence():
    readme = (PHOTOS / "README.md").read_text()
    shipped = sorted(p.name for p in PHOTOS.iterdir() if p.name.endswith(".png"))
    assert shipped
    for name in shipped:
        row = next((line for line in readme.splitlines() if f"`{name}`" in line), "")
        assert re.search(r"CC0|CC-BY|public domain|BSD|MIT", row), f"{name}: no licence in _photos/README.md"
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    package_data = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]["package-data"]["convscope"]
    assert "_photos/*.png" in package_data and "_photos/*.md" in package_data
