"""Image files as a user's camera and disk give them: EXIF orientation, very large photos, one image as `--data`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from convscope import data as cdata
from convscope.errors import BadImageError, DatasetError, OptionError
from convscope.models import ModelSpec

ORIENTATION = 0x0112  # the EXIF tag
MAX_PIXELS_VARIABLE = "CONVSCOPE_MAX_PIXELS"  # documented in the README


def _sideways_jpeg(path, orientation: int):
    """A JPEG stored 8 rows x 16 columns, white on its left half, black on its right, with an orientation tag."""
    stored = np.zeros((8, 16, 3), dtype=np.uint8)
    stored[:, :8] = 255
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    return path


def _halves(pixels: torch.Tensor) -> tuple[float, float]:
    """Mean brightness of the top and bottom halves of (C, H, W) pixels."""
    h = pixels.shape[-2] // 2
    return float(pixels[..., :h, :].mean()), float(pixels[..., h:, :].mean())


@pytest.mark.parametrize("orientation, white", [(6, "top"), (8, "bottom")])
def test_exif_orientation_turns_the_photo_upright_everywhere_it_is_read(tmp_path, orientation, white):
    # Tag 6: the camera was turned clockwise; a viewer rotates the stored pixels 90 degrees clockwise, so the stored
    # left half ends up on top. Tag 8 is the opposite turn: the left half ends up at the bottom.
    path = _sideways_jpeg(tmp_path / "photo.jpg", orientation)
    pixels = cdata.load_image(path)
    assert pixels.shape == (3, 16, 8)  # portrait, as the viewer shows it
    top, bottom = _halves(pixels)
    assert (top > 0.9 and bottom < 0.1) if white == "top" else (bottom > 0.9 and top < 0.1)

    (tmp_path / "folder" / "a").mkdir(parents=True)
    _sideways_jpeg(tmp_path / "folder" / "a" / "photo.jpg", orientation)
    assert torch.equal(cdata.resolve(tmp_path / "folder")[0][0], pixels)
    spec = ModelSpec(module=torch.nn.Identity(), name="id", channels=3, input_size=(16, 8))
    assert torch.equal(spec.to_pixels(path)[0], pixels)


def test_an_image_without_orientation_stays_as_stored(tmp_path):
    path = _sideways_jpeg(tmp_path / "photo.jpg", 1)
    assert cdata.load_image(path).shape == (3, 8, 16)


def test_a_photo_above_the_pixel_limit_is_named_as_too_large_with_the_way_to_raise_the_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 60)).save(path)  # 6,000 pixels
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "5000")
    with pytest.raises(BadImageError) as info:
        cdata.load_image(path)
    message = str(info.value)
    assert "corrupt" not in message and "decompression bomb" in message and "100x60" in message
    assert f"{MAX_PIXELS_VARIABLE}=6000" in message and "\n" not in message
    assert cdata.load_image(path, max_pixels=6000).shape == (3, 60, 100)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "6000")
    assert cdata.load_image(path).shape == (3, 60, 100)
    monkeypatch.setenv(MAX_PIXELS_VARIABLE, "lots")
    with pytest.raises(OptionError, match=MAX_PIXELS_VARIABLE):
        cdata.load_image(path)


def test_pillows_own_limit_is_explained_and_can_be_raised_without_changing_it(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)  # 10,000 pixels
    monkeypatch.delenv(MAX_PIXELS_VARIABLE, raising=False)
    for pillow_limit in (8000, 4000):  # Pillow warns above its limit, raises above twice the limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillow_limit)
        with pytest.raises(BadImageError) as info:
            cdata.load_image(path)
        assert "corrupt" not in str(info.value) and MAX_PIXELS_VARIABLE in str(info.value)
        assert "10,000 pixels" in str(info.value)
        monkeypatch.setenv(MAX_PIXELS_VARIABLE, "20000")
        assert cdata.load_image(path).shape == (3, 100, 100)
        assert Image.MAX_IMAGE_PIXELS == pillow_limit  # Pillow's process-wide setting is left as it was
        monkeypatch.delenv(MAX_PIXELS_VARIABLE)


def test_a_truncated_file_is_still_called_corrupt(tmp_path):
    path = tmp_path / "cut.png"
    Image.new("RGB", (64, 64), "red").save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(BadImageError, match="corrupt or truncated"):
        cdata.load_image(path)


def test_one_image_as_a_dataset_says_what_a_dataset_is(tmp_path):
    for name in ("photo.png", "photo.JPG", "photo"):  # by suffix, or by content when the name has none
        path = tmp_path / name
        Image.new("RGB", (8, 8)).save(path, format="PNG")
        with pytest.raises(DatasetError) as info:
            cdata.resolve(path)
        message = str(info.value)
        assert "single image, not a dataset" in message and "labels file found" not in message
        assert "folder" in message and ".npz" in message and "IDX" in message and "fashion-mnist" in message
        assert "photos" in message


def test_a_file_that_is_neither_image_nor_idx_says_it_is_not_idx(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(DatasetError, match="not an IDX file"):
        cdata.resolve(path)
