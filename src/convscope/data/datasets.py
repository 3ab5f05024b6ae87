"""Labelled image datasets behind one small interface, and `batches()` that prepares them for a model.

A `Dataset` has `len()`, `dataset[i] -> (pixels (C, H, W) float32 in [0, 1], label int)`, `classes` (names, index
= label), `channels` and `skipped` (a list of (item, reason) for items that could not be read). Image folders read
files lazily, so memory stays bounded by the batch size; arrays and IDX files live in memory as uint8.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import BadImageError, DatasetError
from .images import IMAGE_SUFFIXES, load_image, pil_to_tensor

__all__ = ["Dataset", "ArrayDataset", "ImageFolder", "TorchvisionDataset", "Subset", "Batch", "batches",
           "match_channels"]

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


class Dataset:
    """Base class: subclasses implement `__len__`, `load(i)` and `labels`, and set `name`, `classes`, `channels`."""

    name: str = "dataset"
    classes: list[str]
    channels: int

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64 labels of all items (without reading any image)."""
        raise NotImplementedError

    def load(self, index: int) -> torch.Tensor:
        """The pixels (C, H, W) float32 in [0, 1] of item `index`; raises `BadImageError` for an unreadable item."""
        raise NotImplementedError

    def load_many(self, indices: Sequence[int]) -> list[torch.Tensor | None]:
        """Pixels of several items; `None` (and an entry in `skipped`) for each item that cannot be read."""
        out: list[torch.Tensor | None] = []
        for i in indices:
            try:
                out.append(self.load(int(i)))
            except BadImageError as error:
                self.skip(self.item_name(int(i)), str(error))
                out.append(None)
        return out

    def item_name(self, index: int) -> str:
        """A name for item `index` (its file path for folders), as used in `skipped`."""
        return f"{self.name}[{index}]"

    def skip(self, item: str, reason: str) -> None:
        self.skipped.append((item, reason))
        warnings.warn(f"skipped {item}: {reason}", stacklevel=3)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {self.name} with {len(self)} items")
        index %= len(self)
        return self.load(index), int(self.labels[index])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        """Items in order, skipping (and recording) unreadable ones."""
        for i in range(len(self)):
            pixels = self.load_many([i])[0]
            if pixels is not None:
                yield pixels, int(self.labels[i])

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "items": len(self), "classes": len(self.classes), "channels": self.channels}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, items={len(self)}, classes={len(self.classes)})"


def _class_names(classes: Sequence[str] | None, labels: np.ndarray) -> list[str]:
    if classes is not None:
        return [str(c) for c in classes]
    count = int(labels.max()) + 1 if labels.size else 0
    return [str(i) for i in range(count)]


class ArrayDataset(Dataset):
    """Images held as an array (N, H, W) or (N, H, W, C), uint8 in [0, 255] or float in [0, 1], with labels (N,)."""

    def __init__(self, images: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int],
                 classes: Sequence[str] | None = None, *, name: str = "array") -> None:
        super().__init__()
        images = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
        if images.ndim == 3:
            images = images[..., None]
        if images.ndim != 4:
            raise DatasetError(f"dataset {name!r}: images must be (N, H, W) or (N, H, W, C), got shape {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DatasetError(f"dataset {name!r}: {len(images)} images but labels of shape {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise DatasetError(f"dataset {name!r}: labels must be integers, got {labels.dtype}")
        if labels.size and labels.min() < 0:
            raise DatasetError(f"dataset {name!r}: negative label {int(labels.min())}")
        self.images = images
        self._labels = labels.astype(np.int64)
        self.classes = _class_names(classes, self._labels)
        if self._labels.size and self._labels.max() >= len(self.classes):
            raise DatasetError(f"dataset {name!r}: label {int(self._labels.max())} but only {len(self.classes)} "
                               "class names")
        self.channels = int(images.shape[3])
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def _convert(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        tensor = tensor.float() / 255.0 if array.dtype == np.uint8 else tensor.float()
        return tensor.movedim(-1, -3).contiguous()

    def load(self, index: int) -> torch.Tensor:
        return self._convert(self.images[index])

    def load_many(self, indices: Sequence[int]) -> list[torch.Tensor | None]:
        return list(self._convert(self.images[np.asarray(indices, dtype=np.int64)]))


class ImageFolder(Dataset):
    """One sub-folder per class (sorted names = class indices), image files read lazily when needed.

    Files in a class folder whose suffix is not an image suffix, and files that turn out unreadable (truncated,
    empty, not an image, a mode that cannot be converted), are listed in `skipped` with the reason and never stop
    a run. `channels` is 1 when the images are grayscale (checked on a few files), else 3, unless given.
    """

    def __init__(self, root: str | Path, *, channels: int | None = None) -> None:
        super().__init__()
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"image folder {str(root)!r} does not exist or is not a folder")
        self.root, self.name = root, str(root)
        self.classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.classes:
            raise DatasetError(f"image folder {str(root)!r} has no class sub-folders (expected ROOT/CLASS/IMAGE)")
        self.paths: list[Path] = []
        labels: list[int] = []
        for label, name in enumerate(self.classes):
            for path in sorted((root / name).rglob("*")):
                if path.is_dir() or path.name.startswith("."):
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    self.skip(str(path), f"not an image file suffix ({path.suffix or 'none'})")
                    continue
                self.paths.append(path)
                labels.append(label)
        if not self.paths:
            raise DatasetError(f"image folder {str(root)!r} holds no image files")
        self._labels = np.asarray(labels, dtype=np.int64)
        self.channels = channels or self._guess_channels()

    def _guess_channels(self) -> int:
        from PIL import Image

        step = max(1, len(self.paths) // 16)
        for path in self.paths[::step][:16]:
            try:
                with Image.open(path) as image:
                    if image.mode not in _GRAY_MODES:
                        return 3
            except Exception:  # an unreadable file is reported when it is loaded
                continue
        return 1

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def item_name(self, index: int) -> str:
        return str(self.paths[index])

    def load(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index], channels=self.channels)


class TorchvisionDataset(Dataset):
    """A torchvision-style dataset object (items `(PIL image or (C, H, W) tensor in [0, 1], label)`).

    Give it without a normalizing transform: convscope normalizes for each model itself.
    """

    def __init__(self, dataset: Any, *, classes: Sequence[str] | None = None, channels: int | None = None,
                 name: str | None = None) -> None:
        super().__init__()
        self.dataset = dataset
        self.name = name or type(dataset).__name__
        targets = getattr(dataset, "targets", None)
        if targets is None:
            targets = [int(dataset[i][1]) for i in range(len(dataset))]
        self._labels = np.asarray(torch.as_tensor(targets), dtype=np.int64)
        names = classes if classes is not None else getattr(dataset, "classes", None)
        self.classes = _class_names(names, self._labels)
        if channels is None and len(dataset):
            try:
                channels = int(self.load(0).shape[0])
            except BadImageError:
                channels = None
        self.channels = channels or 3

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def load(self, index: int) -> torch.Tensor:
        try:
            item = self.dataset[index][0]
        except (OSError, ValueError, SyntaxError) as error:
            raise BadImageError(f"{self.item_name(index)}: {error}") from None
        if isinstance(item, torch.Tensor):
            return (item.unsqueeze(0) if item.ndim == 2 else item).float()
        channels = getattr(self, "channels", None) or (1 if item.mode in _GRAY_MODES else 3)
        return pil_to_tensor(item, channels=channels, name=self.item_name(index))


class Subset(Dataset):
    """The items `indices` of another dataset (same classes; skipped items are recorded on both)."""

    def __init__(self, dataset: Dataset, indices: Iterable[int], *, name: str | None = None) -> None:
        super().__init__()
        self.dataset = dataset
        self.indices = np.asarray(list(indices), dtype=np.int64)
        self.name = name or f"{dataset.name}[subset]"
        self.classes, self.channels = dataset.classes, dataset.channels
        self.skipped = dataset.skipped

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.dataset.labels[self.indices]

    def item_name(self, index: int) -> str:
        return self.dataset.item_name(int(self.indices[index]))

    def load(self, index: int) -> torch.Tensor:
        return self.dataset.load(int(self.indices[index]))

    def load_many(self, indices: Sequence[int]) -> list[torch.Tensor | None]:
        return self.dataset.load_many([int(self.indices[i]) for i in indices])


def match_channels(pixels: torch.Tensor, channels: int, name: str = "image") -> torch.Tensor:
    """(..., C, H, W) -> (..., channels, H, W): gray is repeated, RGB -> gray by ITU-R 601 luma."""
    have = pixels.shape[-3]
    if have == channels:
        return pixels
    if have == 1:
        return pixels.expand(*pixels.shape[:-3], channels, *pixels.shape[-2:])
    if have == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=pixels.dtype, device=pixels.device)
        return (pixels * weights.view(3, 1, 1)).sum(-3, keepdim=True)
    raise DatasetError(f"{name} has {have} channels; the model needs {channels}")


class Batch(NamedTuple):
    """One prepared batch: `inputs` (B, C, H, W) normalized on the model's device, `pixels` (B, C, H, W) in [0, 1]
    (resized, on the CPU), `labels` (B,) int64 and `indices` (B,) positions in the dataset."""

    inputs: torch.Tensor
    pixels: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def batches(dataset: Dataset, spec: Any, batch_size: int = 64, *, limit: int | None = None,
            order: Sequence[int] | np.ndarray | None = None) -> Iterator[Batch]:
    """Stream `dataset` in batches prepared for `spec` (a `ModelSpec`): channels matched, resized/cropped to its
    input size, normalized, moved to its device and dtype.

    `order` gives the item indices to visit (default: all, in order); `limit` keeps the first `limit` of them.
    Unreadable items are recorded in `dataset.skipped`, warned about and left out, so a batch may be smaller.
    Memory holds one batch at a time.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    order = np.arange(len(dataset)) if order is None else np.asarray(order, dtype=np.int64)
    if limit is not None:
        order = order[:limit]
    labels = dataset.labels
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        loaded = dataset.load_many(chunk)
        kept = [(int(i), p) for i, p in zip(chunk, loaded) if p is not None]
        if not kept:
            continue
        pixels = torch.stack([
            spec.fit(match_channels(p, spec.channels, dataset.item_name(i)).unsqueeze(0))[0]
            for i, p in kept
        ]) if _needs_resizing(kept, spec) else match_channels(torch.stack([p for _, p in kept]), spec.channels,
                                                              dataset.name)
        indices = torch.tensor([i for i, _ in kept], dtype=torch.int64)
        inputs = spec.normalize(pixels).to(spec.device, spec.dtype)
        yield Batch(inputs, pixels, torch.from_numpy(labels[indices.numpy()]), indices)


def _needs_resizing(kept: list[tuple[int, torch.Tensor]], spec: Any) -> bool:
    size = tuple(spec.input_size)
    return any(tuple(p.shape[-2:]) != size for _, p in kept)
