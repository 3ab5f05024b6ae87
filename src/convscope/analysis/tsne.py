"""t-SNE of CNN codes (Karpathy's pictures): a layer's pooled codes embedded in 2-D with openTSNE, drawn as a scatter
of thumbnails or as a full grid where each image is snapped to one cell by an optimal assignment.

- `embed(features)`: (N, D) -> (N, 2) with openTSNE (PCA to 50 dimensions first when D is larger, perplexity
  min(30, (N - 1) / 3), PCA initialization, Barnes-Hut gradients below 10,000 points and FFT above, one thread):
  the same features and seed give the same embedding bit for bit.
- `grid_assignment(embedding, shape)`: the embedding scaled to the unit square, each item given one cell of a
  rows x cols grid so that the summed squared distance between items and their cell centres is minimal
  (`scipy.optimize.linear_sum_assignment`).
- `tsne(model, data, layer)`: codes, embedding, grid and thumbnails in one `TSNE` result, savable and loadable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data import Dataset, resolve, resize_crop
from ..errors import OptionError
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from ._store import read_npz, recipe_from_dict, write_npz
from .codes import Codes, Pool, codes

__all__ = ["TSNE", "tsne", "tsne_from_codes", "embed", "grid_shape", "grid_assignment", "MAX_GRID"]

MAX_GRID = 4096  # the assignment's cost matrix is N x cells and its time grows about as N^3
Layout = Literal["grid", "scatter"]


def default_perplexity(count: int) -> float:
    """min(30, (N - 1) / 3), a little under openTSNE's limit so it never has to lower it itself."""
    return float(min(30.0, 0.99 * (count - 1) / 3.0))


def embed(features: np.ndarray | torch.Tensor, *, seed: int = 0, perplexity: float | None = None,
          pca_dims: int | None = 50, n_jobs: int = 1) -> np.ndarray:
    """(N, D) features -> (N, 2) float32 t-SNE embedding (openTSNE).

    Args:
        features: one row per item.
        seed: seeds the PCA, the nearest-neighbour search and the optimization; same seed, same embedding.
        perplexity: effective number of neighbours (default `min(30, (N - 1) / 3)`); must be below (N - 1) / 3.
        pca_dims: reduce to this many principal components first when D is larger (`None`: never).
        n_jobs: openTSNE threads (1 by default: on a busy small machine more threads are slower).
    """
    from openTSNE import TSNE as OpenTSNE
    from threadpoolctl import threadpool_limits

    x = features.detach().cpu().double().numpy() if isinstance(features, torch.Tensor) else np.asarray(
        features, dtype=np.float64)
    if x.ndim != 2:
        raise OptionError(f"t-SNE needs features (N, D), got shape {x.shape}")
    count = x.shape[0]
    if count < 5:
        raise OptionError(f"t-SNE needs at least 5 items, got {count}")
    if not np.isfinite(x).all():
        raise OptionError("t-SNE features contain NaN or infinite values")
    limit = (count - 1) / 3.0
    perplexity = default_perplexity(count) if perplexity is None else float(perplexity)
    if not 0 < perplexity < limit:
        raise OptionError(f"perplexity must be in (0, {limit:.3g}) for {count} items (below (N - 1) / 3), "
                          f"got {perplexity:g}")
    method = "bh" if count < 10_000 else "fft"
    # One BLAS thread (see probe.fit_probe): OpenBLAS threads spinning against torch's cost more than they bring.
    with threadpool_limits(1, user_api="blas"):
        if pca_dims is not None and x.shape[1] > pca_dims and count > pca_dims:
            from sklearn.decomposition import PCA

            x = PCA(n_components=pca_dims, random_state=seed).fit_transform(x)
        result = OpenTSNE(n_components=2, perplexity=perplexity, initialization="pca", negative_gradient_method=method,
                          random_state=seed, n_jobs=n_jobs, verbose=False).fit(x)
    return np.asarray(result, dtype=np.float32)


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of the smallest about-square grid with at least `count` cells (cols = ceil(sqrt(N)))."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return max(1, math.ceil(count / cols)), cols


def _unit_square(embedding: np.ndarray) -> np.ndarray:
    xy = np.asarray(embedding, dtype=np.float64)
    low, high = xy.min(0), xy.max(0)
    return np.where(high > low, (xy - low) / np.where(high > low, high - low, 1.0), 0.5)


def cell_centres(shape: tuple[int, int]) -> np.ndarray:
    """(rows * cols, 2) centres (x, y) of the cells in the unit square, row-major from the top row (y up)."""
    rows, cols = shape
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([(c + 0.5) / cols, 1.0 - (r + 0.5) / rows], axis=1)


def grid_assignment(embedding: np.ndarray | torch.Tensor, shape: tuple[int, int] | None = None) -> np.ndarray:
    """(N, 2) embedding -> (N,) int64 distinct cell indices (row * cols + col) of a rows x cols grid.

    The embedding is scaled to the unit square (each axis to 0..1) and the assignment minimizes the summed squared
    distance between items and their cell centres (y up: the top row holds the largest y). `shape` defaults to
    `grid_shape(N)`; it needs at least N cells.
    """
    from scipy.optimize import linear_sum_assignment

    xy = _unit_square(embedding.numpy() if isinstance(embedding, torch.Tensor) else embedding)
    shape = shape or grid_shape(len(xy))
    if shape[0] * shape[1] < len(xy):
        raise OptionError(f"a {shape[0]}x{shape[1]} grid has fewer cells than the {len(xy)} items")
    centres = cell_centres(shape)
    cost = ((xy[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    items, cells = linear_sum_assignment(cost)
    out = np.empty(len(xy), dtype=np.int64)
    out[items] = cells
    return out


def thumbnails(dataset: Dataset, indices: Sequence[int], side: int = 48) -> np.ndarray:
    """(N, s, s, C) uint8 centre-cropped thumbnails of dataset items, s = min(side, the images' shorter side);
    an item that cannot be read becomes a grey square."""
    loaded = dataset.load_many(list(map(int, indices)))
    shorter = min((min(p.shape[-2:]) for p in loaded if p is not None), default=side)
    s = max(1, min(side, shorter))
    channels = next((p.shape[0] for p in loaded if p is not None), 3)
    out = np.full((len(loaded), s, s, channels), 128, dtype=np.uint8)
    for i, pixels in enumerate(loaded):
        if pixels is not None:
            small = resize_crop(pixels[None].float(), (s, s), s)[0]
            out[i] = (small.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()[..., :channels]
    return out


@dataclass(frozen=True, eq=False)
class TSNE(ResultMixin):
    """A t-SNE embedding of a dataset's codes at one layer.

    Attributes:
        embedding: (N, 2) float32 coordinates, row i for dataset item `indices[i]`.
        cells: (N,) int64 grid cell of each item (row * cols + col), or `None` above `MAX_GRID` items.
        grid_shape: (rows, cols) of that grid.
        indices, labels: (N,) int64 dataset positions and labels; `classes` the label names; `sources` item names.
        thumbnails: (N, s, s, C) uint8 pictures of the items (C = 1 or 3), for drawing.
        layer: the layer whose codes were embedded.
    """

    embedding: torch.Tensor
    cells: torch.Tensor | None
    grid_shape: tuple[int, int]
    indices: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    sources: tuple[str, ...]
    thumbnails: torch.Tensor
    layer: str
    recipe: Recipe

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def _title(self) -> list[str]:
        p = self.recipe.params
        data = p.get("data", {}).get("name", "data")
        dims = f"{p.get('dims')} dims" + (f", PCA to {p['pca_dims']}" if p.get("pca") else "")
        return [f"t-SNE of {self.layer} ({p.get('pool', 'mean')}-pooled, {dims}) on {len(self)} items of {data}",
                f"perplexity {p.get('perplexity', 0):.3g}, seed {p.get('seed')}; {self.recipe.model.get('name', '')}"]

    def _colours(self) -> tuple[np.ndarray | None, list[str] | None]:
        if len(self.classes) > 1:
            return self.labels.numpy(), list(self.classes)
        return None, None

    def to_image(self, *, layout: Layout = "grid", cell: int | None = None, size: int = 1600,
                 thumb: int | None = None) -> Image.Image:
        """The grid (default: each item in its assigned cell, `cell` pixels each) or a scatter of thumbnails
        (`size` pixels square, thumbnails `thumb` pixels). Frames are coloured by class when there are classes."""
        from ..render.embedding import thumbnail_grid, thumbnail_scatter

        labels, names = self._colours()
        thumbs = self.thumbnails.numpy()
        if layout == "scatter":
            side = thumb or max(16, min(64, round(size / math.sqrt(max(1, len(self))) * 1.2)))
            return thumbnail_scatter(self.embedding.numpy(), thumbs, size=size, thumb=side, labels=labels,
                                     names=names, title=self._title())
        if layout != "grid":
            raise OptionError(f"layout must be 'grid' or 'scatter', got {layout!r}")
        if self.cells is None:
            raise OptionError(f"no grid for {len(self)} items (at most {MAX_GRID}); use a smaller limit or the "
                              "scatter layout")
        cell = cell or max(16, min(64, size // self.grid_shape[1]))
        return thumbnail_grid(self.cells.numpy(), self.grid_shape, thumbs, cell=cell, labels=labels, names=names,
                              title=self._title())

    def items(self) -> list[dict[str, Any]]:
        """One dict per item: index, source, label, class, x, y and (row, col) in the grid."""
        cols = self.grid_shape[1]
        out = []
        for i in range(len(self)):
            label = int(self.labels[i])
            item = {"index": int(self.indices[i]), "source": self.sources[i], "label": label,
                    "class": self.classes[label] if 0 <= label < len(self.classes) else str(label),
                    "x": float(self.embedding[i, 0]), "y": float(self.embedding[i, 1])}
            if self.cells is not None:
                item["row"], item["col"] = divmod(int(self.cells[i]), cols)
            out.append(item)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "grid": list(self.grid_shape), "items": self.items(),
                "recipe": self.recipe.to_dict()}

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """The picture (PNG + recipe .json) and beside it `.npz` with the coordinates, grid cells, indices,
        labels and thumbnails (`TSNE.load` reads it back)."""
        path = super().save(path, **kwargs)
        arrays = {"embedding": self.embedding.numpy(), "indices": self.indices.numpy(), "labels": self.labels.numpy(),
                  "thumbnails": self.thumbnails.numpy()}
        if self.cells is not None:
            arrays["cells"] = self.cells.numpy()
        write_npz(path, "tsne", arrays, {"grid_shape": list(self.grid_shape), "classes": list(self.classes),
                                         "sources": list(self.sources), "layer": self.layer,
                                         "recipe": self.recipe.to_dict()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> TSNE:
        """A saved result back from its `.npz` (or the PNG path it was saved under)."""
        arrays, meta = read_npz(path, "tsne")
        cells = arrays.get("cells")
        return cls(embedding=torch.from_numpy(arrays["embedding"]),
                   cells=None if cells is None else torch.from_numpy(cells), grid_shape=tuple(meta["grid_shape"]),
                   indices=torch.from_numpy(arrays["indices"]), labels=torch.from_numpy(arrays["labels"]),
                   classes=tuple(meta["classes"]), sources=tuple(meta["sources"]),
                   thumbnails=torch.from_numpy(arrays["thumbnails"]), layer=meta["layer"],
                   recipe=recipe_from_dict(meta["recipe"]))


def tsne_from_codes(found: Codes, data: Any, layer: str | None = None, *, seed: int = 0,
                    perplexity: float | None = None, pca_dims: int | None = 50, grid: tuple[int, int] | None = None,
                    thumb: int = 48, split: Literal["train", "test"] = "test") -> TSNE:
    """Embed codes already computed (`codes(...)`) of `layer` (default: their only or first layer); `data` is the
    dataset they were computed on, read again for the thumbnails."""
    layer = layer or found.layers[0]
    if layer not in found.codes:
        raise OptionError(f"layer {layer!r} is not among the codes' layers {list(found.codes)}")
    dataset = resolve(data, split=split)
    features = found.codes[layer]
    xy = embed(features, seed=seed, perplexity=perplexity, pca_dims=pca_dims)
    shape = grid or grid_shape(len(xy))
    cells = torch.from_numpy(grid_assignment(xy, shape)) if len(xy) <= MAX_GRID else None
    pics = thumbnails(dataset, found.indices.tolist(), thumb)
    params = {**found.recipe.params, "layer": layer, "dims": int(features.shape[1]),
              "pca": bool(pca_dims is not None and features.shape[1] > pca_dims and len(xy) > pca_dims),
              "pca_dims": pca_dims, "perplexity": perplexity or default_perplexity(len(xy)), "seed": seed,
              "grid": list(shape), "method": "openTSNE", "assignment": "linear_sum_assignment"}
    params.pop("layers", None)
    recipe = Recipe(kind="tsne", model=found.recipe.model, params=params)
    return TSNE(embedding=torch.from_numpy(xy), cells=cells, grid_shape=tuple(shape), indices=found.indices,
                labels=found.labels, classes=found.classes, sources=found.sources,
                thumbnails=torch.from_numpy(pics), layer=layer, recipe=recipe)


def tsne(
    model: ModelSpec | nn.Module | str,
    data: Any,
    layer: str | None = None,
    *,
    limit: int | None = 1000,
    seed: int = 0,
    pool: Pool = "mean",
    perplexity: float | None = None,
    pca_dims: int | None = 50,
    grid: tuple[int, int] | None = None,
    thumb: int = 48,
    split: Literal["train", "test"] = "test",
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> TSNE:
    """t-SNE of a layer's pooled codes over a dataset, with a grid assignment and thumbnails.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string.
        data: anything `convscope.data.resolve` accepts (`"fashion-mnist"`, `"photos"`, an image folder, ...).
        layer: a module path (its output), `PATH:input`, or `input`; default the input of the last linear layer.
        limit: a seeded random sample of this many items (default 1000; `None`: all). The grid needs at most
            `MAX_GRID` items.
        seed: seeds the sample and the embedding.
        pool: "mean" or "max" over a feature map's positions.
        perplexity, pca_dims: see `embed`.
        grid: (rows, cols) of the grid (default about square, `grid_shape(N)`).
        thumb: thumbnail side in pixels (at most the images' own size).
        split: "train" or "test" for named datasets.
    """
    spec = load(model)
    dataset = resolve(data, split=split, channels=spec.channels)
    found = codes(spec, dataset, None if layer is None else [layer], pool=pool, limit=limit, seed=seed,
                  batch_size=batch_size, progress=progress)
    return tsne_from_codes(found, dataset, found.layers[0], seed=seed, perplexity=perplexity, pca_dims=pca_dims,
                           grid=grid, thumb=thumb)
