"""Linear probes (Alain & Bengio 2016): for each layer, a linear classifier on its pooled codes and its held-out
accuracy, so one sees where the classes become linearly separable.

Each probe is scikit-learn's `LogisticRegression` (L2, lbfgs, multinomial) on codes standardized with the training
items' mean and deviation. Training and test items come from a seeded stratified split of one dataset, or from
two datasets (`train_data`, e.g. a dataset's own train split). Chance is the accuracy of always answering the most
frequent training class.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from ..data import resolve
from ..errors import DatasetError, OptionError
from ..hooks import INPUT_SUFFIX
from ..models import ModelSpec, load
from ..results import Recipe, ResultMixin
from ._store import read_npz, recipe_from_dict, write_npz
from .codes import PIXELS, Codes, Pool, codes, conv_linear_layers, default_layer, resolve_layers

__all__ = ["Probes", "probe", "probe_codes", "fit_probe", "probe_layers", "split_items"]


def probe_layers(model: nn.Module, count: int = 6) -> list[str]:
    """The default layers to probe: the model input, `count` conv/linear outputs evenly spread from the first to
    the last, and the input of the last linear layer, in network order."""
    found = conv_linear_layers(model)
    if len(found) > count:
        picks = np.linspace(0, len(found) - 1, count).round().astype(int)
        found = [found[i] for i in sorted(set(picks.tolist()))]
    code = default_layer(model)
    names = [PIXELS, *found]
    if code not in names:
        base = code.removesuffix(INPUT_SUFFIX)
        order = [n for n, _ in model.named_modules()]
        position = order.index(base)
        later = [i for i, n in enumerate(names) if n != PIXELS and order.index(n) >= position]
        names.insert(later[0] if later else len(names), code)
    return names


def split_items(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) positions: a seeded split, stratified by label when every class has at least two items."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise OptionError(f"test_size must be between 0 and 1, got {test_size}")
    positions = np.arange(len(labels))
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    try:
        train, test = train_test_split(positions, test_size=test_size, random_state=seed, stratify=stratify)
    except ValueError:  # too few items per class for a stratified test set of this size
        train, test = train_test_split(positions, test_size=test_size, random_state=seed)
    return np.sort(train), np.sort(test)


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, seed: int = 0,
              c: float = 1.0, max_iter: int = 1000) -> tuple[float, float]:
    """Fit a standardized logistic regression on (train_x (N, D), train_y (N,)); -> (test accuracy, train accuracy)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    if len(np.unique(train_y)) < 2:
        raise DatasetError("a probe needs training items of at least two classes")
    scaler = StandardScaler().fit(train_x)
    model = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    # One BLAS thread: these matrices are small, and OpenBLAS threads spinning against torch's OpenMP threads made
    # fits 25x slower on a busy 2-core machine.
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # the accuracy says what matters
        warnings.filterwarnings("ignore", message="The number of unique classes")  # few items per class: known
        model.fit(scaler.transform(train_x), train_y)
    test = float((model.predict(scaler.transform(test_x)) == test_y).mean())
    train = float((model.predict(scaler.transform(train_x)) == train_y).mean())
    return test, train


@dataclass(frozen=True, eq=False)
class Probes(ResultMixin):
    """Held-out accuracy of a linear probe per layer.

    Attributes:
        layers: the probed layers, in network order; `dims` their code sizes.
        accuracy: held-out accuracy per layer; `train_accuracy` on the training items.
        chance: accuracy of always answering the most frequent training class.
        n_train, n_test: items in each part; `classes` the class names.
    """

    layers: tuple[str, ...]
    dims: tuple[int, ...]
    accuracy: tuple[float, ...]
    train_accuracy: tuple[float, ...]
    chance: float
    n_train: int
    n_test: int
    classes: tuple[str, ...]
    recipe: Recipe

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": layer, "dims": d, "accuracy": a, "train_accuracy": t}
                for layer, d, a, t in zip(self.layers, self.dims, self.accuracy, self.train_accuracy)]

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.rows(), "chance": self.chance, "n_train": self.n_train, "n_test": self.n_test,
                "classes": list(self.classes), "recipe": self.recipe.to_dict()}

    def table(self) -> str:
        """The plain-text table the CLI prints."""
        width = max(12, *(len(n) for n in self.layers))
        data = self.recipe.params.get("data", {}).get("name", "data")
        trained = self.recipe.params.get("train_data")
        source = f" (trained on {trained.get('name')})" if trained else ""
        lines = [f"{self.recipe.model.get('name', 'model')} on {data}{source}: linear probes, {self.n_train} train / "
                 f"{self.n_test} held-out items, {len(self.classes)} classes",
                 f"{'layer':<{width}}  {'dims':>6}  {'held-out acc.':>13}  {'train acc.':>10}"]
        for row in self.rows():
            lines.append(f"{row['layer']:<{width}}  {row['dims']:>6}  {row['accuracy']:>13.3f}  "
                         f"{row['train_accuracy']:>10.3f}")
        lines.append(f"{'chance':<{width}}  {'':>6}  {self.chance:>13.3f}")
        return "\n".join(lines)

    def to_image(self) -> Image.Image:
        from ..render.bars import score_bars

        data = self.recipe.params.get("data", {}).get("name", "data")
        return score_bars([f"{n} ({d})" for n, d in zip(self.layers, self.dims)], self.accuracy,
                          reference=self.chance, title=[
                              f"linear probe held-out accuracy: {self.recipe.model.get('name', '')} on {data}",
                              f"{self.n_train} train / {self.n_test} test items, {len(self.classes)} classes"])

    def save(self, path: str | Path, **kwargs: Any) -> Path:
        """The bar chart (PNG + recipe .json) and the numbers beside it as `.npz` (`Probes.load` reads it back)."""
        path = super().save(path, **kwargs)
        write_npz(path, "probes", {"accuracy": np.asarray(self.accuracy), "train_accuracy":
                                   np.asarray(self.train_accuracy), "dims": np.asarray(self.dims, dtype=np.int64)},
                  {"layers": list(self.layers), "chance": self.chance, "n_train": self.n_train,
                   "n_test": self.n_test, "classes": list(self.classes), "recipe": self.recipe.to_dict()})
        return path

    @classmethod
    def load(cls, path: str | Path) -> Probes:
        arrays, meta = read_npz(path, "probes")
        return cls(layers=tuple(meta["layers"]), dims=tuple(int(d) for d in arrays["dims"]),
                   accuracy=tuple(float(a) for a in arrays["accuracy"]),
                   train_accuracy=tuple(float(a) for a in arrays["train_accuracy"]), chance=float(meta["chance"]),
                   n_train=int(meta["n_train"]), n_test=int(meta["n_test"]), classes=tuple(meta["classes"]),
                   recipe=recipe_from_dict(meta["recipe"]))


def probe_codes(train: Codes, test: Codes | None = None, *, test_size: float = 0.25, seed: int = 0, c: float = 1.0,
                max_iter: int = 1000, progress: Callable[[str], None] | None = None) -> Probes:
    """Probes on codes already computed: `train` alone is split (seeded, stratified) into training and held-out
    items; with `test`, `train` trains and `test` is held out (same layers and classes)."""
    if test is None:
        train_pos, test_pos = split_items(train.labels.numpy(), test_size, seed)
        test, parts = train, (train_pos, test_pos)
    else:
        if test.layers != train.layers:
            raise OptionError(f"train and test codes have different layers: {train.layers} vs {test.layers}")
        parts = (np.arange(len(train)), np.arange(len(test)))
    train_y, test_y = train.labels.numpy()[parts[0]], test.labels.numpy()[parts[1]]
    majority = np.bincount(train_y).argmax()
    accuracy, train_accuracy, dims = [], [], []
    for layer in train.layers:
        if progress is not None:
            progress(layer)
        x_train = train.codes[layer].numpy()[parts[0]]
        x_test = test.codes[layer].numpy()[parts[1]]
        held_out, fitted = fit_probe(x_train, train_y, x_test, test_y, seed=seed, c=c, max_iter=max_iter)
        accuracy.append(held_out)
        train_accuracy.append(fitted)
        dims.append(int(x_train.shape[1]))
    params = {**train.recipe.params, "test_size": None if test is not train else test_size, "seed": seed, "C": c,
              "max_iter": max_iter, "probe": "sklearn LogisticRegression (lbfgs, L2) on standardized codes"}
    if test is not train:
        params.update(data=test.recipe.params.get("data"), split="test", train_data=train.recipe.params.get("data"))
    return Probes(layers=train.layers, dims=tuple(dims), accuracy=tuple(accuracy),
                  train_accuracy=tuple(train_accuracy), chance=float((test_y == majority).mean()),
                  n_train=len(parts[0]), n_test=len(parts[1]), classes=train.classes,
                  recipe=Recipe(kind="probes", model=train.recipe.model, params=params))


def probe(
    model: ModelSpec | nn.Module | str,
    data: Any,
    layers: str | Sequence[str] | None = None,
    *,
    train_data: Any = None,
    limit: int | None = None,
    seed: int = 0,
    pool: Pool = "mean",
    test_size: float = 0.25,
    c: float = 1.0,
    max_iter: int = 1000,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
) -> Probes:
    """Linear probes of `layers` on a dataset.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string.
        data: the dataset (for a named dataset, its test split); split into training and held-out items unless
            `train_data` is given.
        layers: `None` (`probe_layers`: the input, six conv/linear outputs spread over the network and the input of
            the last linear layer), `"all"` (every conv/linear output) or names as for `codes`.
        train_data: a separate training dataset (for a named dataset, its train split); `data` is then held out.
        limit: a seeded random sample of this many items of each dataset (`None`: all).
        seed: seeds the samples, the split and the classifier.
        pool: "mean" or "max" over a feature map's positions.
        test_size: held-out fraction of a single dataset.
        c, max_iter: the logistic regression's inverse L2 strength and iteration cap.
        progress: called with the number of items after each batch.
    """
    spec = load(model)
    names = probe_layers(spec.module) if layers is None else resolve_layers(spec.module, layers)
    test = codes(spec, data, names, pool=pool, limit=limit, seed=seed, batch_size=batch_size, progress=progress)
    if train_data is None:
        return probe_codes(test, test_size=test_size, seed=seed, c=c, max_iter=max_iter)
    dataset = resolve(train_data, split="train", channels=spec.channels)
    if list(dataset.classes) != list(test.classes):
        raise DatasetError(f"train data {dataset.name} has classes {dataset.classes[:5]}... but the test data "
                           f"{list(test.classes[:5])}...; probes need the same classes")
    train = codes(spec, dataset, names, pool=pool, limit=limit, seed=seed, split="train", batch_size=batch_size,
                  progress=progress)
    return probe_codes(train, test, seed=seed, c=c, max_iter=max_iter)
