"""Datasets: IDX files, image folders with bad files, .npz, torchvision datasets, resolve() and batches()."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope import data as cdata
from convscope.errors import DatasetError
from convscope.models import ModelSpec

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")


def _idx_bytes(array: np.ndarray) -> bytes:
    """An independent IDX encoder: magic 0 0 0x08 ndim, big-endian sizes, raw uint8 data."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


# --- IDX -----------------------------------------------------------------------------------------------------------

def test_idx_reads_what_an_independent_encoder_wrote(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    (tmp_path / "plain-images-idx3-ubyte").write_bytes(_idx_bytes(images))
    (tmp_path / "zipped-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    for name in ("plain-images-idx3-ubyte", "zipped-images-idx3-ubyte.gz"):
        read = cdata.read_idx(tmp_path / name)
        assert read.shape == (5, 4, 3) and read.dtype == np.uint8
        np.testing.assert_array_equal(read, images)
        read[0, 0, 0] = 1  # writable


def test_idx_roundtrip_of_wider_types(tmp_path):
    for array in (np.arange(12, dtype=np.int32).reshape(3, 4) - 5, np.linspace(-1, 1, 6).astype(np.float32)):
        back = cdata.read_idx(cdata.write_idx(tmp_path / "a.idx.gz", array))
        np.testing.assert_array_equal(back, array)
        assert back.dtype.isnative


@pytest.mark.parametrize("damage, message", [
    (lambda raw: raw[:-7], "truncated"),
    (lambda raw: raw[:6], "truncated inside its header"),
    (lambda raw: raw + b"\x00\x01", "more than its header"),
    (lambda raw: b"\x08\x03" + raw[2:], "not an IDX file"),
    (lambda raw: raw[:2] + b"\x42" + raw[3:], "unknown data type"),
    (lambda raw: gzip.compress(raw)[:-20], "gzip"),
    (lambda raw: b"", "empty"),
])
def test_idx_damage_is_a_clear_dataset_error(tmp_path, damage, message):
    raw = _idx_bytes(np.zeros((3, 2, 2), dtype=np.uint8))
    path = tmp_path / "bad-images-idx3-ubyte"
    path.write_bytes(damage(raw))
    with pytest.raises(DatasetError, match=message) as info:
        cdata.read_idx(path)
    assert str(path) in str(info.value)


def test_idx_dataset_checks_label_count(tmp_path):
    (tmp_path / "x-images-idx3-ubyte").write_bytes(_idx_bytes(np.zeros((4, 2, 2), np.uint8)))
    (tmp_path / "x-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(DatasetError, match="3,"):
        cdata.resolve(tmp_path / "x-images-idx3-ubyte")


@needs_fashion
def test_real_fashion_mnist_headers_and_counts():
    train = cdata.read_idx(FASHION / "train-images-idx3-ubyte.gz")
    labels = cdata.read_idx(FASHION / "t10k-labels-idx1-ubyte.gz")
    assert train.shape == (60000, 28, 28) and train.dtype == np.uint8
    assert labels.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
    test = cdata.resolve("fashion-mnist", split="test")
    assert len(test) == 10000 and test.channels == 1 and test.classes[0] == "T-shirt/top"
    pixels, label = test[0]
    assert pixels.shape == (1, 28, 28) and 0 <= pixels.min() and pixels.max() <= 1 and label == int(labels[0])


# --- image folders with bad files ----------------------------------------------------------------------------------

def _bad_folder(root: Path) -> dict[str, Path]:
    cats, dogs = root / "cats", root / "dogs"
    cats.mkdir(parents=True)
    dogs.mkdir()
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(cats / "good.png")
    full = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    full.save(dogs / "whole.png")
    raw = (dogs / "whole.png").read_bytes()
    files = {"good": cats / "good.png", "truncated": cats / "truncated.png", "empty": cats / "empty.png",
             "text": dogs / "text.png", "cmyk": dogs / "cmyk.jpg", "sixteen": dogs / "sixteen.png",
             "palette": dogs / "palette.png", "rgba": dogs / "rgba.png", "notes": dogs / "notes.txt"}
    (dogs / "whole.png").unlink()
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not an image\n")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(files["cmyk"])  # pure red in CMYK
    Image.fromarray(np.full((6, 6), 32768, np.uint16)).save(files["sixteen"])
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(files["palette"])
    rgba = np.zeros((5, 5, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[..., 3] = 0  # fully transparent: composited on white
    Image.fromarray(rgba, "RGBA").save(files["rgba"])
    files["notes"].write_text("labels, whatever")
    return files


def test_image_folder_skips_and_reports_bad_files_by_name(tmp_path):
    files = _bad_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        folder = cdata.ImageFolder(tmp_path)
        items = list(folder)
    assert folder.classes == ["cats", "dogs"] and folder.channels == 3
    skipped = {Path(p).name: reason for p, reason in folder.skipped}
    assert set(skipped) == {"truncated.png", "empty.png", "text.png", "notes.txt"}
    assert "truncated" in skipped["truncated.png"] or "corrupt" in skipped["truncated.png"]
    assert "empty" in skipped["empty.png"] and "not an image" in skipped["text.png"]
    assert any("text.png" in str(w.message) for w in caught)
    assert len(items) == 5  # good, cmyk, sixteen, palette, rgba
    for pixels, _ in items:
        assert pixels.shape[0] == 3 and pixels.dtype == torch.float32 and 0 <= pixels.min() and pixels.max() <= 1
    by_name = {Path(folder.paths[i]).name: folder.load(i) for i in range(len(folder)) if
               Path(folder.paths[i]).name not in skipped}
    cmyk = by_name["cmyk.jpg"].mean((1, 2))
    assert cmyk[0] > 0.9 and cmyk[1] < 0.1 and cmyk[2] < 0.1
    assert torch.allclose(by_name["sixteen.png"], torch.full_like(by_name["sixteen.png"], 32768 / 65535), atol=1e-4)
    assert torch.allclose(by_name["rgba.png"], torch.ones_like(by_name["rgba.png"]))
    assert abs(float(by_name["palette.png"][0].mean()) - 200 / 255) < 1e-3


def test_batches_never_stop_on_bad_files_and_prepare_for_the_spec(tmp_path):
    _bad_folder(tmp_path)
    folder = cdata.ImageFolder(tmp_path)
    spec = ModelSpec(torch.nn.Conv2d(1, 2, 3), "tiny", channels=1, input_size=(7, 9), mean=(0.25,), std=(0.5,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = list(cdata.batches(folder, spec, batch_size=3))
    assert sum(len(b.labels) for b in got) == 5
    for batch in got:
        assert batch.pixels.shape[1:] == (1, 7, 9) and batch.inputs.shape == batch.pixels.shape
        torch.testing.assert_close(batch.inputs, (batch.pixels - 0.25) / 0.5)
        np.testing.assert_array_equal(batch.labels.numpy(), folder.labels[batch.indices.numpy()])


def test_gray_folder_has_one_channel(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.full((4, 4), 10, np.uint8)).save(tmp_path / cls / "x.png")
    folder = cdata.ImageFolder(tmp_path)
    pixels, label = folder[1]
    assert folder.channels == 1 and pixels.shape == (1, 4, 4) and label == 1
    assert torch.allclose(pixels, torch.full_like(pixels, 10 / 255))
    assert cdata.ImageFolder(tmp_path, channels=3).load(0).shape == (3, 4, 4)


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        cdata.ImageFolder(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        cdata.ImageFolder(tmp_path)


# --- arrays, npz, torchvision datasets, resolve ---------------------------------------------------------------------

def test_array_dataset_and_npz(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (6, 5, 4, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "d.npz", images=images, labels=labels, classes=np.array(["x", "y", "z"]))
    data = cdata.resolve(tmp_path / "d.npz")
    assert data.classes == ["x", "y", "z"] and data.channels == 3 and len(data) == 6
    pixels, label = data[4]
    torch.testing.assert_close(pixels, torch.from_numpy(images[4]).permute(2, 0, 1).float() / 255)
    assert label == 1
    np.savez(tmp_path / "bad.npz", x=images)
    with pytest.raises(DatasetError, match="'images' and 'labels'"):
        cdata.resolve(tmp_path / "bad.npz")
    with pytest.raises(DatasetError, match="labels"):
        cdata.ArrayDataset(images, labels[:3])


def test_torchvision_dataset_object():
    from torchvision.datasets import FakeData

    fake = FakeData(size=6, image_size=(3, 12, 10), num_classes=3, random_offset=0)
    data = cdata.resolve(fake)
    assert isinstance(data, cdata.TorchvisionDataset) and data.channels == 3 and len(data) == 6
    assert data.load(2).shape == (3, 12, 10) and data.labels.tolist() == [int(fake[i][1]) for i in range(6)]


def test_resolve_named_dataset_in_torchvision_layout_and_failed_download(tmp_path, monkeypatch):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(np.full((3, 28, 28), 255, np.uint8)))
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx_bytes(np.array([7, 1, 0], np.uint8)))
    monkeypatch.setenv("CONVSCOPE_DATA", str(tmp_path))
    mnist = cdata.resolve("mnist", split="test")
    assert len(mnist) == 3 and mnist.classes[7] == "7" and mnist.labels.tolist() == [7, 1, 0]

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DatasetError, match="downloading it failed.*network is unreachable"):
        cdata.resolve("mnist", split="train")


def test_resolve_unknown_name_suggests():
    with pytest.raises(DatasetError, match="fashion-mnist"):
        cdata.resolve("fashion-mnis")


def test_idx_file_and_idx_folder_paths(tmp_path):
    images = np.random.default_rng(3).integers(0, 256, (4, 6, 6), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(np.array([3, 1, 2, 0], np.uint8))))
    by_file = cdata.resolve(tmp_path / "t10k-images-idx3-ubyte.gz")
    by_folder = cdata.resolve(tmp_path, split="test")
    for data in (by_file, by_folder):
        assert len(data) == 4 and data.labels.tolist() == [3, 1, 2, 0] and data.channels == 1
        torch.testing.assert_close(data.load(2)[0], torch.from_numpy(images[2]).float() / 255)
    with pytest.raises(DatasetError, match="IDX files for the 'test' split but none for 'train'"):
        cdata.resolve(tmp_path, split="train")
