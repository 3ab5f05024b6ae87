"""`resolve(data)`: what `--data` accepts - a dataset name, an image folder, a `.npz` file, or an IDX file.

Named datasets: `fashion-mnist` and `mnist`. They are looked up in `$CONVSCOPE_DATA` (or the given root), in
torchvision's folder layout (`ROOT/FashionMNIST/raw`, `ROOT/MNIST/raw`), and for Fashion-MNIST in Debian's
`/usr/share/datasets/fashion-mnist`; failing that, torchvision downloads them into the root (needs internet).
`photos` is the folder of colour photo crops that `python -m convscope.data.photos` builds in the root (data/photos.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import DatasetError, suggest
from .datasets import ArrayDataset, Dataset, ImageFolder, TorchvisionDataset
from .idx import read_idx
from .images import IMAGE_SUFFIXES

__all__ = ["resolve", "idx_dataset", "npz_dataset", "data_root", "FASHION_MNIST_CLASSES", "DATASET_NAMES"]

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
MNIST_CLASSES = [str(i) for i in range(10)]

# name -> (torchvision folder and class name, class names, extra places to look)
_NAMED: dict[str, tuple[str, list[str], tuple[str, ...]]] = {
    "fashion-mnist": ("FashionMNIST", FASHION_MNIST_CLASSES, ("/usr/share/datasets/fashion-mnist",)),
    "mnist": ("MNIST", MNIST_CLASSES, ()),
}
DATASET_NAMES = tuple(_NAMED)
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

Split = Literal["train", "test"]


def data_root() -> Path:
    """Where named datasets are looked for and downloaded: `$CONVSCOPE_DATA`, else `~/.cache/convscope/data`."""
    return Path(os.environ.get("CONVSCOPE_DATA") or Path.home() / ".cache" / "convscope" / "data")


def _find_idx(folder: Path, split: Split) -> tuple[Path, Path] | None:
    prefix = _SPLIT_PREFIX[split]
    for suffix in (".gz", ""):
        images = folder / f"{prefix}-images-idx3-ubyte{suffix}"
        labels = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
        if images.is_file() and labels.is_file():
            return images, labels
    return None


def _labels_next_to(images: Path) -> Path:
    name = images.name
    for old, new in (("images-idx3", "labels-idx1"), ("images", "labels")):
        if old in name:
            candidate = images.with_name(name.replace(old, new))
            if candidate.is_file():
                return candidate
    raise DatasetError(f"no labels file found next to IDX images {str(images)!r} (expected e.g. "
                       f"{name.replace('images-idx3', 'labels-idx1')!r})")


def _is_image(path: Path) -> bool:
    """An image file by its suffix or, failing that, by what Pillow makes of its header (IDX files start with two
    zero bytes, which no image format does)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with path.open("rb") as handle:
        head = handle.read(4)
    if head[:2] in (b"\x00\x00", b"\x1f\x8b"):  # IDX, gzipped or not
        return False
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            return True
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False


def idx_dataset(images: str | Path, labels: str | Path | None = None, *, classes: list[str] | None = None,
                name: str | None = None) -> ArrayDataset:
    """An IDX image file (N, H, W) with its labels file (found next to it when not given)."""
    images = Path(images)
    pixels = read_idx(images)  # first: a file that is not IDX at all says so, rather than lacking a labels file
    labels = Path(labels) if labels is not None else _labels_next_to(images)
    targets = read_idx(labels)
    if pixels.ndim not in (3, 4) or pixels.dtype != np.uint8:
        raise DatasetError(f"IDX images {str(images)!r} must be uint8 (N, H, W), got {pixels.dtype} {pixels.shape}")
    if targets.ndim != 1 or len(targets) != len(pixels):
        raise DatasetError(f"IDX labels {str(labels)!r} hold {targets.shape} labels for {len(pixels)} images")
    return ArrayDataset(pixels, targets.astype(np.int64), classes, name=name or str(images))


def npz_dataset(path: str | Path, *, name: str | None = None) -> ArrayDataset:
    """A `.npz` file with `images` (N, H, W[, C]), `labels` (N,) and optionally `classes` (K,) strings."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            if not {"images", "labels"} <= keys:
                raise DatasetError(f"{str(path)!r} needs arrays 'images' and 'labels'; it holds {sorted(keys)}")
            classes = [str(c) for c in archive["classes"]] if "classes" in keys else None
            return ArrayDataset(archive["images"], archive["labels"], classes, name=name or str(path))
    except (OSError, ValueError, EOFError) as error:
        raise DatasetError(f"cannot read {str(path)!r} as a .npz file ({error})") from None


def _named(key: str, split: Split, root: Path | None) -> ArrayDataset:
    folder_name, classes, extra = _NAMED[key]
    root = Path(root) if root is not None else data_root()
    places = [root / key, root / folder_name / "raw", root, *map(Path, extra)]
    for place in places:
        found = _find_idx(place, split)
        if found:
            return idx_dataset(*found, classes=classes, name=f"{key}:{split}")
    _download(folder_name, split, root)
    found = _find_idx(root / folder_name / "raw", split)
    if not found:  # pragma: no cover - torchvision changed its layout
        raise DatasetError(f"{key}: torchvision downloaded into {str(root)!r} but no IDX files were found")
    return idx_dataset(*found, classes=classes, name=f"{key}:{split}")


def _download(folder_name: str, split: Split, root: Path) -> None:
    """The ordinary torchvision download into `root` (torchvision's own layout)."""
    import torchvision

    cls = getattr(torchvision.datasets, folder_name)
    try:
        cls(str(root), train=split == "train", download=True)
    except Exception as error:  # network errors come in many types (URLError, HTTPError, OSError, RuntimeError)
        reason = " ".join(str(error).split())  # torchvision's message spans lines; errors print in one
        raise DatasetError(
            f"dataset {folder_name!r} ({split}) is not in {str(root)!r} and downloading it failed ({reason}). "
            "With internet access torchvision downloads it; offline, put the IDX files into "
            f"{str(root / folder_name / 'raw')!r} or set $CONVSCOPE_DATA."
        ) from None


def resolve(data: Any, *, split: Split = "test", channels: int | None = None, root: str | Path | None = None
            ) -> Dataset:
    """Anything `--data` accepts -> a `Dataset`.

    Args:
        data: a `Dataset` (returned as is); a torchvision dataset object; an `(images, labels)` pair of arrays;
            a name (`"fashion-mnist"`, `"mnist"`, `"photos"`); a folder (one sub-folder per class, or a folder of IDX
            files `train-images-idx3-ubyte[.gz]` / `t10k-...`); a `.npz` file; or an IDX image file with its labels
            file next to it.
        split: `"train"` or `"test"`, for names and IDX folders.
        channels: force the channel count of an image folder (default: 1 if its images are gray, else 3).
        root: where named datasets live (default `data_root()`).
    """
    if isinstance(data, Dataset):
        return data
    if split not in _SPLIT_PREFIX:
        raise DatasetError(f"split must be 'train' or 'test', got {split!r}")
    if isinstance(data, tuple) and len(data) == 2:
        return ArrayDataset(*data)
    if not isinstance(data, (str, Path)):
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            return TorchvisionDataset(data, channels=channels)
        raise DatasetError(f"cannot use a {type(data).__name__} as a dataset")
    key = str(data).lower().replace("_", "-")
    if key in ("fashionmnist", "fashion"):
        key = "fashion-mnist"
    if key in _NAMED and not Path(data).exists():
        return _named(key, split, Path(root) if root is not None else None)
    if key == "photos" and not Path(data).exists():  # one folder, no splits: not in DATASET_NAMES
        from .photos import photos_dataset

        return photos_dataset(root, channels=channels)
    path = Path(data).expanduser()
    if path.is_dir():
        found = _find_idx(path, split)
        if found:
            return idx_dataset(*found, name=f"{path}:{split}")
        other = "test" if split == "train" else "train"
        if _find_idx(path, other):  # type: ignore[arg-type]
            raise DatasetError(f"folder {str(path)!r} holds IDX files for the {other!r} split but none for {split!r} "
                               f"(expected {_SPLIT_PREFIX[split]}-images-idx3-ubyte[.gz])")
        return ImageFolder(path, channels=channels)
    if path.is_file():
        if path.suffix == ".npz":
            return npz_dataset(path)
        if _is_image(path):
            raise DatasetError(f"{str(path)!r} is a single image, not a dataset. A dataset is a folder of images (one "
                               "sub-folder per class: ROOT/CLASS/IMAGE), a .npz file (images, labels), an IDX file "
                               f"with its labels file beside it, or a name ({', '.join((*DATASET_NAMES, 'photos'))}); "
                               "give one image to commands that take image arguments instead")
        return idx_dataset(path)
    names = (*DATASET_NAMES, "photos")
    raise DatasetError(f"dataset {str(data)!r} is neither a known name ({', '.join(names)}) nor an existing "
                       f"folder or file.{suggest(key, names)}")
