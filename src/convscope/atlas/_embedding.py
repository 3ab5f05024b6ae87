"""The stages that read the dataset as a whole rather than unit by unit: the model's predictions for each image of
the atlas's dataset sample, the t-SNE grid of that sample's codes (`analysis.tsne`), and a linear probe per layer
(`analysis.probe`).

The t-SNE grid is made of exactly the sample the atlas stores (`--samples`), so every cell links to its image's page,
where the stored predictions show. Probes read a seeded random sample of `--probe-limit` items (a quarter held out,
stratified), since a probe needs more items than a page of thumbnails. Every pass here is seeded and batched the same
way whoever runs it, so a resumed build, which recomputes only the layers still missing, stores the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..analysis.tsne import MAX_GRID
from ..results import Recipe
from ._builtin import sample_indices
from .stages import Key, Stage, StageContext, register_stage
from .store import Output

__all__ = ["Predictions", "TSNEGrid", "LinearProbes", "TOP", "BATCH"]

TOP = 5  # classes stored per image
BATCH = 64  # items per forward pass in these stages (fixed: a float32 result can depend on its batch's size)


def _sample(ctx: StageContext) -> list[int]:
    return sample_indices(len(ctx.dataset), ctx.config.samples)


@register_stage
class Predictions(Stage):
    """The model's top classes for each image of the dataset sample (shown on the image pages)."""

    name = "predictions"
    kind = "prediction"
    level = "model"
    needs = ("data",)
    title = "predictions"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [("", i) for i in _sample(ctx)]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..data import batches
        from ..models.predict import logits

        dataset = ctx.dataset
        wanted = [index for _, index in todo]
        recipe = Recipe("predict", ctx.spec.describe(), {"data": dataset.describe(), "top": TOP, "batch": BATCH})
        base = recipe.to_dict()
        made: set[int] = set()
        for batch in batches(dataset, ctx.spec, BATCH, order=wanted):
            probs = logits(ctx.spec, batch.inputs).softmax(-1)
            values, classes = probs.topk(min(TOP, probs.shape[1]), dim=1)
            for row, index in enumerate(batch.indices.tolist()):
                label = int(batch.labels[row])
                top = [{"class": int(c), "name": ctx.spec.class_name(int(c)), "probability": float(p)}
                       for c, p in zip(classes[row].tolist(), values[row].tolist())]
                payload = {"index": index, "label": label, "top": top}
                made.add(index)
                yield Output(self.kind, "", index, payload, {**base, "params": {**base["params"], "index": index}})
        # an unreadable image has no prediction: its row says so, and a resume does not try it again
        for index in sorted(set(wanted) - made):
            yield Output(self.kind, "", index, {"index": index, "top": [], "error": "the image cannot be read"},
                         recipe)


@register_stage
class TSNEGrid(Stage):
    """Karpathy's t-SNE grid of the dataset sample's codes at the model's default code layer (the input of its last
    linear layer): `analysis.tsne`'s embedding and grid assignment, stored with the dataset index of every cell."""

    name = kind = "tsne"
    level = "model"
    needs = ("data",)
    title = "t-SNE grid"

    def available(self, ctx: StageContext) -> str | None:
        reason = super().available(ctx)
        if reason is None and not 5 <= ctx.config.samples <= MAX_GRID:
            return f"a t-SNE grid needs --samples between 5 and {MAX_GRID}"
        return reason

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [("", -1)]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..analysis import codes, tsne_from_codes
        from ..analysis.codes import default_layer  # the model's code layer (not exported by the package)

        dataset, seed = ctx.dataset, ctx.config.seed
        layer = default_layer(ctx.spec.module)
        found = codes(ctx.spec, dataset, [layer], indices=_sample(ctx), seed=seed, batch_size=BATCH,
                      progress=lambda done: ctx.partial(0.9 * done / max(1, ctx.config.samples)))
        grid = tsne_from_codes(found, dataset, layer, seed=seed)
        rows, cols = grid.grid_shape
        cells: list[int | None] = [None] * (rows * cols)
        for position, cell in enumerate(grid.cells.tolist()):
            cells[cell] = int(grid.indices[position])
        payload = {"layer": layer, "rows": rows, "cols": cols, "cells": cells, "items": len(grid),
                   "perplexity": grid.recipe.params.get("perplexity"), "classes": list(grid.classes),
                   "labels": {str(int(i)): int(lab) for i, lab in zip(grid.indices, grid.labels)}}
        yield Output(self.kind, "", -1, payload, grid.recipe, {"grid": grid.to_image()})


@register_stage
class LinearProbes(Stage):
    """A linear probe per layer of the atlas (`analysis.probe_codes`): held-out accuracy on the layer's pooled codes
    over a seeded sample of `--probe-limit` dataset items, a quarter held out."""

    name = kind = "probe"
    level = "layer"
    needs = ("data",)
    title = "linear probes"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [(row["name"], -1) for row in ctx.atlas.layers(selected=True)]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..analysis import codes, probe_codes

        layers = [layer for layer, _ in todo]
        limit, seed = ctx.config.probe_limit, ctx.config.seed
        total = min(limit, len(ctx.dataset)) if limit else len(ctx.dataset)
        found = codes(ctx.spec, ctx.dataset, layers, limit=limit, seed=seed, batch_size=BATCH,
                      progress=lambda done: ctx.partial(0.8 * len(layers) * done / max(1, total)))
        probes = probe_codes(found, seed=seed)
        base = probes.recipe.to_dict()
        params = {k: v for k, v in base["params"].items() if k != "layers"}
        for row in probes.rows():
            payload = {"accuracy": row["accuracy"], "train_accuracy": row["train_accuracy"], "dims": row["dims"],
                       "train_size": probes.n_train, "test_size": probes.n_test, "chance": probes.chance,
                       "classes": len(probes.classes)}
            yield Output(self.kind, row["layer"], -1, payload, {**base, "params": {**params, "layer": row["layer"]}})
