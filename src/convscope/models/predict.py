"""Classifying images and measuring accuracy on a labelled dataset.

`predict(spec, images, top=5)` -> `Prediction` (top classes with names and probabilities per image);
`evaluate(spec, dataset)` -> `Evaluation` (top-1, top-5, per-class accuracy, confusion counts). Both leave the
model as they found it (eval mode only for the call) and carry a `Recipe`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import DatasetError, TargetError
from ..hooks import frozen
from ..results import Recipe, ResultRepr
from .loading import load
from .spec import ModelSpec

__all__ = ["Prediction", "Evaluation", "predict", "evaluate", "logits"]

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


@dataclass(frozen=True)
class Prediction(ResultRepr):
    """Top classes per image.

    Attributes:
        probs: (B, K) softmax probabilities of the top K classes, descending.
        indices: (B, K) their class indices.
        names: B tuples of K class names (the index as text when the model has no class names).
        inputs: B names of the inputs (file paths, or `input[i]`).
    """

    probs: torch.Tensor
    indices: torch.Tensor
    names: tuple[tuple[str, ...], ...]
    inputs: tuple[str, ...]
    recipe: Recipe

    def rows(self) -> list[dict[str, Any]]:
        """One dict per input: `{"input": ..., "top": [{"rank", "index", "name", "prob"}, ...]}`."""
        return [{"input": source, "top": [{"rank": k + 1, "index": int(i), "name": n, "prob": float(p)}
                                          for k, (i, n, p) in enumerate(zip(idx, names, probs))]}
                for source, idx, names, probs in zip(self.inputs, self.indices, self.names, self.probs)]

    def to_dict(self) -> dict[str, Any]:
        return {"predictions": self.rows(), "recipe": self.recipe.to_dict()}


def _pixels(spec: ModelSpec, image: ImageLike) -> torch.Tensor:
    """One image -> (n, C, H, W) [0, 1] pixels at the model's input size."""
    from ..data.datasets import match_channels

    if isinstance(image, torch.Tensor):
        if image.ndim in (3, 4):  # gray <-> RGB is converted, as for image files
            image = match_channels(image.float(), spec.channels, "input")
        pixels = spec.batch(image, "pixels").to("cpu", torch.float32)  # kept with the file images until batched
        return spec.fit(pixels)
    return spec.to_pixels(image)


def logits(spec: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    """Normalized inputs (B, C, H, W) -> outputs (B, K) in inference mode, model left as found."""
    with frozen(spec) as work, torch.inference_mode():
        out = work.run(inputs.to(spec.device, spec.dtype))
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TargetError(f"model {spec.name!r} returned {shape}; a classifier must return (batch, classes)")
    return out.float()


def predict(spec: ModelSpec | Any, images: ImageLike | Sequence[ImageLike], *, top: int = 5,
            batch_size: int = 32) -> Prediction:
    """Classify images: the `top` most probable classes of each.

    Args:
        spec: a `ModelSpec` (or anything `convscope.models.load` accepts).
        images: a path, PIL image, array (H, W[, C]), a pixel tensor (C, H, W) / (B, C, H, W) in [0, 1]
            (resized to the model's input size if needed), or a list of these.
        top: how many classes per image (capped at the number of classes).
    """
    spec = load(spec)
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    names: list[str] = []
    chunks = []
    for i, item in enumerate(items):
        pixels = _pixels(spec, item)
        chunks.append(pixels)
        label = str(item) if isinstance(item, (str, Path)) else f"input[{i}]"
        names += [label] if len(pixels) == 1 else [f"{label}[{j}]" for j in range(len(pixels))]
    pixels = torch.cat(chunks)
    outs = [logits(spec, spec.normalize(pixels[s:s + batch_size])) for s in range(0, len(pixels), batch_size)]
    probs = torch.cat(outs).softmax(-1)
    k = max(1, min(top, probs.shape[1]))
    values, indices = probs.topk(k, dim=1)
    class_names = tuple(tuple(spec.class_name(int(i)) for i in row) for row in indices)
    recipe = Recipe("predict", spec.describe(), {"top": k, "inputs": names})
    return Prediction(values.cpu(), indices.cpu(), class_names, tuple(names), recipe)


@dataclass(frozen=True)
class Evaluation(ResultRepr):
    """Accuracy of a model on a labelled dataset.

    Attributes:
        top1, top5: fractions of items whose class is the first / among the first five (or fewer) predictions.
        count: items evaluated (unreadable ones are in `skipped`, not counted).
        classes: the dataset's class names, index = dataset label.
        correct, total: (K,) top-1 hits and items per dataset class.
        confusion: (K, M) counts of (dataset class, predicted model class).
        skipped: (item, reason) for every item that could not be read.
    """

    top1: float
    top5: float
    count: int
    classes: tuple[str, ...]
    correct: torch.Tensor
    total: torch.Tensor
    confusion: torch.Tensor
    skipped: tuple[tuple[str, str], ...]
    recipe: Recipe

    def per_class(self) -> dict[str, float | None]:
        """Class name -> top-1 accuracy (None for classes with no items)."""
        return {name: (float(c) / float(t) if t else None)
                for name, c, t in zip(self.classes, self.correct, self.total)}

    def to_dict(self) -> dict[str, Any]:
        return {"top1": self.top1, "top5": self.top5, "count": self.count, "per_class": self.per_class(),
                "skipped": [list(s) for s in self.skipped], "recipe": self.recipe.to_dict()}


def label_map(dataset_classes: Sequence[str], spec: ModelSpec, outputs: int) -> torch.Tensor:
    """Dataset label -> model class index: identity when the class lists agree (or the model has no names),
    else by class name (`"tabby"` folders for an ImageNet model). Raises `DatasetError` for unmatched names."""
    names = spec.class_names
    if not names or list(dataset_classes) == list(names[:len(dataset_classes)]):
        if len(dataset_classes) > outputs:
            raise DatasetError(f"the dataset has {len(dataset_classes)} classes but the model only {outputs} outputs")
        return torch.arange(len(dataset_classes))
    mapped, missing = [], []
    for name in dataset_classes:
        try:
            mapped.append(spec.class_index(name))
        except TargetError:
            missing.append(name)
            mapped.append(-1)
    if missing:
        raise DatasetError(f"dataset classes {missing[:5]} are not classes of {spec.name!r}; name the class "
                           "folders after the model's classes or use the same class order")
    return torch.tensor(mapped)


def evaluate(spec: ModelSpec | Any, dataset: Any, *, batch_size: int = 64, limit: int | None = None,
             progress: Callable[[int], None] | None = None) -> Evaluation:
    """Top-1 / top-5 / per-class accuracy of `spec` on a labelled dataset (anything `convscope.data.resolve`
    accepts; a name means its test split). `progress(n)` is called after each batch with its size."""
    from ..data import batches, resolve

    spec = load(spec)
    data = resolve(dataset, split="test", channels=spec.channels)
    mapping: torch.Tensor | None = None
    k = len(data.classes)
    correct = torch.zeros(k, dtype=torch.int64)
    total = torch.zeros(k, dtype=torch.int64)
    confusion: torch.Tensor | None = None
    hits5 = 0
    for batch in batches(data, spec, batch_size, limit=limit):
        out = logits(spec, batch.inputs).cpu()
        if mapping is None:
            mapping = label_map(data.classes, spec, out.shape[1])
            confusion = torch.zeros(k, out.shape[1], dtype=torch.int64)
        target = mapping[batch.labels]
        top = out.topk(min(5, out.shape[1]), dim=1).indices
        first = top[:, 0]
        hit = first == target
        hits5 += int((top == target[:, None]).any(1).sum())
        correct += torch.bincount(batch.labels[hit], minlength=k)
        total += torch.bincount(batch.labels, minlength=k)
        assert confusion is not None
        confusion.index_put_((batch.labels, first), torch.ones_like(first), accumulate=True)
        if progress is not None:
            progress(len(batch.labels))
    count = int(total.sum())
    if count == 0:
        raise DatasetError(f"no readable items in dataset {data.name!r} ({len(data.skipped)} skipped)")
    recipe = Recipe("evaluate", spec.describe(), {"dataset": data.name, "limit": limit, "batch_size": batch_size})
    return Evaluation(top1=int(correct.sum()) / count, top5=hits5 / count, count=count, classes=tuple(data.classes),
                      correct=correct, total=total, confusion=confusion if confusion is not None else torch.zeros(0),
                      skipped=tuple(data.skipped), recipe=recipe)
