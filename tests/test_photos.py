"""The `photos` dataset: built deterministically and idempotently from installed photographs, with a manifest and
credits; resolvable as `photos`; and on the real crops, MobileNetV2's codes group crops of the same photo."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convscope.data import resolve
from convscope.data.photos import PHOTO_SOURCES, PhotoSource, build_photos, photos_folder
from convscope.errors import DatasetError

SOURCES = [s for s in PHOTO_SOURCES if s.name in ("chelsea", "coffee")]
needs_skimage = pytest.mark.skipif(any(s.locate() is None for s in SOURCES), reason="scikit-image is not installed")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


@needs_skimage
def test_build_is_deterministic_idempotent_and_documented(tmp_path):
    missing = PhotoSource("nowhere", "made-up (Debian)", "/nonexistent/photo.jpg", "CC0-1.0", "nobody")
    folder = build_photos(tmp_path / "a", crops=3, size=32, sources=[*SOURCES, missing], log=None)
    assert folder == photos_folder(tmp_path / "a")
    files = _files(folder)
    assert sorted(files) == [f"{s.name}/{s.name}-{k:03d}.jpg" for s in SOURCES for k in range(3)]
    assert all(Image.open(folder / f).size == (32, 32) for f in files)
    manifest = json.loads((folder / "manifest.json").read_text())
    for crop in manifest["crops"]:
        source = next(s for s in manifest["sources"] if s["name"] == crop["class"])
        width, height = Image.open(source["file"]).size
        left, top, right, bottom = crop["box"]
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        assert right - left == pytest.approx(bottom - top, rel=0.02)  # square in the source's pixels
    credits = (folder / "CREDITS.md").read_text()
    assert "Stefan van der Walt" in credits and "CC0-1.0" in credits and "nowhere" in credits
    stamp = {f: (folder / f).stat().st_mtime_ns for f in files}
    build_photos(tmp_path / "a", crops=3, size=32, sources=[*SOURCES, missing], log=None)  # up to date: untouched
    assert {f: (folder / f).stat().st_mtime_ns for f in files} == stamp
    again = build_photos(tmp_path / "b", crops=3, size=32, sources=SOURCES, log=None)
    assert _files(again) == files  # same sources and seed, same bytes
    alone = build_photos(tmp_path / "c", crops=3, size=32, sources=SOURCES[:1], log=None)
    assert _files(alone) == {k: v for k, v in files.items() if k.startswith("chelsea/")}  # others do not move them
    other = build_photos(tmp_path / "d", crops=3, size=32, seed=1, sources=SOURCES, log=None)
    assert _files(other) != files


@needs_skimage
def test_resolve_finds_the_built_folder_and_explains_a_missing_one(tmp_path):
    with pytest.raises(DatasetError, match="python -m convscope.data.photos"):
        resolve("photos", root=tmp_path)
    build_photos(tmp_path, crops=2, size=16, sources=SOURCES, log=None)
    data = resolve("photos", root=tmp_path)
    assert data.name == "photos" and data.classes == ["chelsea", "coffee"] and len(data) == 4
    assert data.channels == 3 and data[0][0].shape == (3, 16, 16)
    with pytest.raises(DatasetError, match="none of the source photographs"):
        build_photos(tmp_path / "x", sources=[PhotoSource("n", "p (Debian)", "/nonexistent.jpg", "-", "-")], log=None)


def _real_photos():
    try:
        return resolve("photos")
    except DatasetError:
        return None


@pytest.mark.skipif(_real_photos() is None, reason="the photos dataset is not built (scripts/build_photos.py)")
def test_mobilenet_codes_group_crops_of_the_same_photo(one_thread):
    from convscope.analysis import codes
    from convscope.models import load

    try:
        spec = load("torchvision:mobilenet_v2@IMAGENET1K_V1")
    except Exception as error:  # no weights offline
        pytest.skip(f"MobileNetV2 weights unavailable: {error}")
    data = _real_photos()
    preferred = [c for c in ("chelsea", "coffee", "mate-ladybird", "lomiri-bridge") if c in data.classes]
    picks = (preferred + [c for c in data.classes if c not in preferred])[:4]
    if len(picks) < 3:
        pytest.skip("too few source photos in the built dataset")
    labels = data.labels
    indices = np.concatenate([np.flatnonzero(labels == data.classes.index(c))[:6] for c in picks])
    found = codes(spec, data, indices=indices, batch_size=32)
    x = torch.nn.functional.normalize(found.codes[found.layers[0]], dim=1)
    similarity = x @ x.T
    similarity.fill_diagonal_(-2)
    nearest = similarity.argmax(1)
    agreement = (found.labels[nearest] == found.labels).float().mean().item()
    assert found.layers == ("classifier.1:input",) and agreement >= 0.9  # chance is about 1 / len(picks)
