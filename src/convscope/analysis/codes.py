"""CNN codes: each chosen layer's output, pooled over space, for every item of a dataset, in one streaming pass.

A layer is a `named_modules()` path (its output), `PATH:input` (what goes into that module, e.g. the features a
classifier reads) or `input` (the model's input itself, average-pooled to at most 16x16 and flattened: the pixel
baseline). The default is the input of the last `nn.Linear` (found from the structure, in `named_modules()`
order), the "CNN code" of Karpathy's t-SNE pictures; a model without a linear layer uses its last convolution.

Only the codes are kept ((N, D) float32 per layer); the forward pass stops after the deepest chosen layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..accel import exact_pools
from ..data import Dataset, batches, resolve
from ..errors import DatasetError, LayerNotFoundError, OptionError
from ..hooks import INPUT_SUFFIX, capture, frozen, get_module, split_call
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from ._store import read_npz, recipe_from_dict, write_npz

__all__ = ["Codes", "codes", "default_layer", "conv_linear_layers", "resolve_layers", "sample_indices", "PIXELS"]

Pool = Literal["mean", "max"]
PIXELS = "input"
_PIXEL_GRID = 16


def conv_linear_layers(model: nn.Module) -> list[str]:
    """Every convolution and linear layer of the model, in `named_modules()` order (what `layers="all"` means)."""
    return [name for name, m in model.named_modules() if name and isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))]


def default_layer(model: nn.Module) -> str:
    """The input of the last `nn.Linear` (`"fc2:input"`), else the output of the last convolution."""
    linears = [name for name, m in model.named_modules() if name and isinstance(m, nn.Linear)]
    if linears:
        return linears[-1] + INPUT_SUFFIX
    convs = conv_linear_layers(model)
    if convs:
        return convs[-1]
    raise LayerNotFoundError(f"{type(model).__name__} has no linear or convolution layer; name a layer "
                             "(see `convscope layers MODEL`)")


def resolve_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    """User layer names -> checked names: `None` is `[default_layer(model)]`, `"all"` every conv/linear output,
    a comma-separated string or a list is taken as given (unknown paths raise with the closest names)."""
    if layers is None:
        return [default_layer(model)]
    if isinstance(layers, str):
        if layers == "all":
            return conv_linear_layers(model)
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    names = list(dict.fromkeys(layers))
    if not names:
        raise OptionError("no layer given; name at least one (or 'all')")
    for name in names:
        if name != PIXELS:
            get_module(model, split_call(name)[0].removesuffix(INPUT_SUFFIX))
    return names


def sample_indices(count: int, limit: int | None, seed: int) -> np.ndarray:
    """All of `range(count)`, or a seeded random sample of `limit` of them (sorted, so files are read in order)."""
    if limit is not None and limit < 1:
        raise OptionError(f"limit must be at least 1, got {limit}")
    if limit is None or limit >= count:
        return np.arange(count, dtype=np.int64)
    picked = np.random.default_rng(seed).choice(count, size=limit, replace=False)
    return np.sort(picked).astype(np.int64)


def pool_activation(activation: torch.Tensor, pool: Pool) -> torch.Tensor:
    """(B, C, *spatial) -> (B, C) by the spatial mean or max; (B, F) is returned as is. Float32 on the CPU."""
    a = activation.detach().float()
    if a.ndim > 2:
        a = a.flatten(2)
        a = a.mean(2) if pool == "mean" else a.amax(2)
    return a.reshape(a.shape[0], -1).cpu()


def pixel_code(inputs: torch.Tensor) -> torch.Tensor:
    """The model input (B, C, H, W) average-pooled to at most 16x16 and flattened -> (B, C * h * w) float32."""
    x = inputs.detach().float()
    if x.ndim == 4:
        x = F.adaptive_avg_pool2d(x, (min(x.shape[2], _PIXEL_GRID), min(x.shape[3], _PIXEL_GRID)))
    return x.flatten(1).cpu()


@dataclass(frozen=True, eq=False)
class Codes(ResultMixin):
    """Pooled codes of some layers over a dataset.

    Attributes:
        codes: layer name -> (N, D) float32 codes, row i for dataset item `indices[i]`.
        indices: (N,) int64 positions of the items in the dataset (unreadable items are left out).
        labels: (N,) int64 dataset labels; `classes` their names.
        sources: N item names (file paths for image folders, `name[i]` otherwise).
        skipped: (item, reason) for each item that could not be read.
        pool: how feature maps were reduced over space ("mean" or "max").
    """

    codes: dict[str, torch.Tensor]
    indices: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    sources: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...]
    pool: Pool
    recipe: Recipe

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.codes)

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def to_image(self, *, max_items: int = 256, max_dims: int = 256) -> Image.Image:
        """Each layer's code matrix (items sorted by label down, dimensions across, each scaled to its range)."""
        from ..render.embedding import code_matrices

        order = torch.argsort(self.labels, stable=True)[:max_items]
        panels = {name: c[order][:, :max_dims].numpy() for name, c in self.codes.items()}
        return code_matrices(panels, title=f"{len(self)} items ({self.pool}-pooled codes, sorted by label)")

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """The picture (PNG + recipe .json) and the codes beside it as `.npz` (`Codes.load` reads it back)."""
        path = super().save(path, **kwargs)
        arrays = {f"code_{i}": c.numpy() for i, c in enumerate(self.codes.values())}
        write_npz(path, "codes", {**arrays, "indices": self.indices.numpy(), "labels": self.labels.numpy()},
                  {"layers": list(self.codes), "classes": list(self.classes), "sources": list(self.sources),
                   "skipped": [list(s) for s in self.skipped], "pool": self.pool, "recipe": self.recipe.to_dict()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Codes:
        arrays, meta = read_npz(path, "codes")
        return cls(codes={name: torch.from_numpy(arrays[f"code_{i}"]) for i, name in enumerate(meta["layers"])},
                   indices=torch.from_numpy(arrays["indices"]), labels=torch.from_numpy(arrays["labels"]),
                   classes=tuple(meta["classes"]), sources=tuple(meta["sources"]),
                   skipped=tuple(tuple(s) for s in meta["skipped"]), pool=meta["pool"],
                   recipe=recipe_from_dict(meta["recipe"]))


def codes(
    model: ModelSpec | nn.Module | str,
    data: Any,
    layers: str | Sequence[str] | None = None,
    *,
    pool: Pool = "mean",
    limit: int | None = None,
    seed: int = 0,
    indices: Sequence[int] | np.ndarray | None = None,
    split: Literal["train", "test"] = "test",
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Codes:
    """Pooled codes of `layers` for the items of a dataset.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string.
        data: anything `convscope.data.resolve` accepts (a name like `"fashion-mnist"` or `"photos"`, an image
            folder, a `.npz`, a `Dataset`).
        layers: `None` (the input of the last linear layer), `"all"` (every conv/linear output), or names:
            module paths (their output), `PATH:input` (their input) and `input` (the model input, pooled to at most
            16x16 and flattened).
        pool: "mean" (default) or "max" over the spatial positions of a feature map (B, C, H, W) -> (B, C).
        limit: keep a seeded random sample of this many items (`None`: all). `indices` picks items explicitly.
        seed: seed of that sample.
        split: "train" or "test", for named datasets.
        batch_size: items per forward pass.
        progress: called with the number of items after each batch (progress bars).

    Runs under `torch.inference_mode` on the model's device, in eval mode, stopping after the deepest chosen layer;
    the model is left as found. Unreadable items are reported (`skipped`) and left out.
    """
    if pool not in ("mean", "max"):
        raise OptionError(f"pool must be 'mean' or 'max', got {pool!r}")
    spec = load(model)
    dataset: Dataset = resolve(data, split=split, channels=spec.channels)
    names = resolve_layers(spec.module, layers)
    order = (np.asarray(indices, dtype=np.int64) if indices is not None
             else sample_indices(len(dataset), limit, seed))
    hooked = [name for name in names if name != PIXELS]
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    seen, labels = [], []
    skipped_before = len(dataset.skipped)
    with frozen(spec.module) as module, exact_pools(module), torch.inference_mode(), \
            capture(module, hooked, stop=True) as cap:
        for batch in batches(dataset, spec, batch_size, order=order):
            if hooked:
                cap.run(batch.inputs)
            for name in names:
                parts[name].append(pixel_code(batch.inputs) if name == PIXELS else pool_activation(cap[name], pool))
            seen.append(batch.indices)
            labels.append(batch.labels)
            if progress is not None:
                progress(len(batch.indices))
    if not seen:
        raise DatasetError(f"no readable item among the {len(order)} chosen from {dataset.name}")
    found = torch.cat(seen)
    recipe = Recipe(kind="codes", model=spec.describe(), params={
        "data": dataset.describe(), "split": split, "layers": names, "pool": pool, "limit": limit, "seed": seed,
        "items": int(found.shape[0])})
    return Codes(codes={name: torch.cat(p) for name, p in parts.items()}, indices=found,
                 labels=torch.cat(labels), classes=tuple(dataset.classes),
                 sources=tuple(dataset.item_name(int(i)) for i in found),
                 skipped=tuple(dataset.skipped[skipped_before:]), pool=pool, recipe=recipe)
