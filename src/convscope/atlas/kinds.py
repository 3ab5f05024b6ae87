"""The kinds of results an atlas holds: for each, its level, its payload and its image roles.

This is the contract between the build stages that write results and the viewer that shows them. The viewer shows
a section for every kind it finds and knows; a kind it does not know is shown as its payload and pictures. A kind
marked `planned` has no stage yet: its payload is fixed here so its stage and the viewer's section fit without a
schema change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["Kind", "KINDS", "kind"]

Level = Literal["model", "layer", "unit"]


@dataclass(frozen=True)
class Kind:
    """One kind of result.

    Attributes:
        name: the `kind` column.
        level: "unit" rows are keyed (kind, layer, unit); "layer" rows (kind, layer, -1); "model" rows (kind, '', -1)
            or, for per-class and per-image rows, (kind, '', class or dataset index).
        title: the section heading in the viewer.
        payload: the JSON payload's fields, for the stage author and the viewer's template.
        images: the image roles ("patch:{i}" means patch:0, patch:1, ...).
        planned: True for kinds of stages not built yet.
    """

    name: str
    level: Level
    title: str
    payload: str
    images: tuple[str, ...] = ()
    planned: bool = False


KINDS: dict[str, Kind] = {k.name: k for k in [
    Kind("featvis", "unit", "Feature visualization",
         "value, start_value (objective after/before), render_dead (the objective stayed 0), chunk, item",
         ("image", "thumb")),
    Kind("filter", "unit", "Filter", "shape [C, kh, kw], norm, smoothness (null for 1x1)", ("image",)),
    Kind("evolution", "unit", "Evolution across checkpoints", "labels [checkpoint names], values [objective]",
         ("strip",)),
    Kind("class_model", "model", "Class model", "class index, name, value (the class logit reached)", ("image",)),
    Kind("dataset_image", "model", "Dataset image", "index, label, class name, source", ("image",)),
    # written by the dataset scan stage (`_analysis`)
    Kind("topk", "unit", "Top images",
         "k, by ('max'|'mean'), examples [{index, source, label, class, value, row, col}] best first",
         ("image:{i}", "patch:{i}", "projection:{i}")),
    Kind("purity", "unit", "Class purity",
         "majority (class name), fraction (of the top-k), histogram {class name: count}"),
    Kind("stats", "unit", "Activation statistics",
         "mean, std, max, active (fraction of inputs where the unit fires), sparsity (1 - active), dead (never "
         "fires), inputs, by, histogram {edges [bins - 1], counts [bins]}"),
    Kind("trust", "unit", "Trust figure",
         "render_value (the unit's spatial max on its stored picture), best_dataset_value (its spatial max on the "
         "best dataset image), ratio (render / best dataset; > 1: the picture drives the unit harder than any "
         "dataset image; null when the best dataset value is <= 0 or below 1/1000 of the render's, and no_ratio "
         "says which), best_index, by ('max')"),
    Kind("layer_stats", "layer", "Layer statistics", "units, dead [unit...], median_sparsity, inputs"),
    # written by the stages of `_embedding`
    Kind("prediction", "model", "Predictions",
         "index, label, top [{class, name, probability}] most probable first (error when unreadable)"),
    Kind("probe", "layer", "Linear probe",
         "accuracy (held-out), train_accuracy, dims, train_size, test_size, chance, classes"),
    Kind("tsne", "model", "t-SNE grid",
         "layer, rows, cols, cells: rows*cols dataset indices (or null), row-major; items, perplexity, classes, "
         "labels {index: label}", ("grid",)),
]}


def kind(name: str) -> Kind | None:
    return KINDS.get(name)
