"""The stages built on the library as it is: a dataset sample, class models, and per unit its feature
visualization, its filter (first conv layer) and its evolution strip across checkpoints.

Per-unit renders are batched a whole fixed chunk at a time (`render` seeds item i of a batch from (seed, i), so a
unit's picture depends on its chunk): a resumed build re-renders the chunk of a missing unit and keeps only the
units still missing, which come out exactly as in an uninterrupted build.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from PIL import Image

from ..render.core import to_pil
from ..results import Recipe
from .stages import Key, Stage, StageContext, register_stage
from .store import Output

__all__ = ["DatasetSample", "ClassModels", "FeatureVisualization", "Filters", "EvolutionStrips", "sample_indices",
           "THUMB"]

THUMB = 96  # side of the thumbnails the layer grid shows for pictures larger than 128 pixels
SAMPLE_SIDE = 256  # dataset images are stored at most this large (the live page resizes them for the model anyway)


def sample_indices(total: int, count: int) -> list[int]:
    """`count` dataset indices spread evenly over `total` items (all of them when there are fewer)."""
    if total <= count:
        return list(range(total))
    if count <= 1:
        return [0][:count]
    return sorted({round(k * (total - 1) / (count - 1)) for k in range(count)})


def _with_thumb(image: Image.Image) -> dict[str, Image.Image]:
    images = {"image": image}
    if max(image.size) > 128:
        thumb = image.copy()
        thumb.thumbnail((THUMB, THUMB), Image.LANCZOS)
        images["thumb"] = thumb
    return images


def _chunks(ctx: StageContext, todo: list[Key]) -> Iterator[tuple[str, list[int], list[int]]]:
    """(layer, all units of a chunk in item order, those of them in `todo`) for every chunk with work left."""
    missing = set(todo)
    for layer, chunks in ctx.plan().items():
        for _, units in sorted(chunks.items()):
            keep = [u for u in units if (layer, u) in missing]
            if keep:
                yield layer, units, keep


@register_stage
class DatasetSample(Stage):
    """A sample of the dataset stored in the atlas: the live page's "pick a dataset image" and the pages of
    images that later analyses (top-k, t-SNE) link to, without the dataset itself."""

    name = kind = "dataset_image"
    level = "model"
    needs = ("data",)
    title = "dataset sample"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [("", i) for i in sample_indices(len(ctx.dataset), ctx.config.samples)]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..errors import BadImageError

        dataset = ctx.dataset
        labels = dataset.labels
        for _, index in todo:
            label = int(labels[index])
            payload = {"index": index, "label": label, "source": dataset.item_name(index),
                       "class": dataset.classes[label] if 0 <= label < len(dataset.classes) else str(label)}
            recipe = Recipe("dataset_image", ctx.spec.describe(), {"data": dataset.describe(), "index": index,
                                                                   "stored_side": SAMPLE_SIDE})
            try:
                image = to_pil(dataset.load(index))
            except BadImageError as error:
                yield Output(self.kind, "", index, {**payload, "error": str(error)}, recipe)
                continue
            image.thumbnail((SAMPLE_SIDE, SAMPLE_SIDE), Image.LANCZOS)
            yield Output(self.kind, "", index, payload, recipe, {"image": image})


@register_stage
class ClassModels(Stage):
    """Simonyan et al.'s class model for each chosen class, all classes in one batch."""

    name = kind = "class_model"
    level = "model"
    title = "class models"

    def classes(self, ctx: StageContext) -> list[int]:
        spec = ctx.spec
        if ctx.config.classes is None:
            count = len(spec.class_names or [])
            return list(range(count)) if 0 < count <= 10 else []
        return [spec.class_index(c) for c in ctx.config.classes]

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [("", c) for c in self.classes(ctx)]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..featvis import class_model

        classes = self.classes(ctx)  # the batch is always every chosen class: a class's picture never moves
        vis = class_model(ctx.spec, classes, steps=ctx.config.steps, seed=ctx.config.seed,
                          progress=lambda d, t: ctx.partial(len(todo) * d / t))
        recipe = vis.recipe.to_dict()
        for item, index in enumerate(classes):
            if ("", index) in todo:
                payload = {"class": index, "name": ctx.spec.class_name(index), "value": float(vis.values[item]),
                           "item": item}
                yield Output(self.kind, "", index, payload, {**recipe, "params": {**recipe["params"], "item": item}},
                             _with_thumb(vis.image(item)))


@register_stage
class FeatureVisualization(Stage):
    """Each unit's feature visualization: `featvis.render` of a whole chunk of a layer's channels at once."""

    name = kind = "featvis"
    level = "unit"
    title = "feature visualizations"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [(layer, unit) for layer, unit, _, _ in ctx.atlas.plan()]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..featvis import channel, render

        for layer, units, keep in _chunks(ctx, todo):
            vis = render(ctx.spec, channel(layer, units), steps=ctx.config.steps, seed=ctx.config.seed,
                         progress=lambda d, t, n=len(keep): ctx.partial(n * d / t))
            recipe = vis.recipe.to_dict()
            for item, unit in enumerate(units):
                if unit not in keep:
                    continue
                payload = {"value": float(vis.values[item]), "start_value": float(vis.start_values[item]),
                           "render_dead": item in vis.dead, "chunk": units, "item": item}
                params = {**recipe["params"], "unit": unit, "item": item}
                yield Output(self.kind, layer, unit, payload, {**recipe, "params": params},
                             _with_thumb(vis.image(item)))


@register_stage
class Filters(Stage):
    """The filter of each unit of the model's first convolution (the one that reads the input), as a picture."""

    name = kind = "filter"
    level = "unit"
    title = "filters"

    def _grid(self, ctx: StageContext):
        from ..analysis import filters
        from ..errors import LayerNotFoundError

        try:
            grid = filters(ctx.spec)
        except LayerNotFoundError:
            return None
        return grid if grid.input_space else None

    def wanted(self, ctx: StageContext) -> list[Key]:
        grid = self._grid(ctx)
        if grid is None:
            return []
        return [(layer, unit) for layer, unit, _, _ in ctx.atlas.plan() if layer == grid.layer]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        grid = self._grid(ctx)
        recipe = grid.recipe.to_dict()
        for layer, unit in todo:
            w = grid.weights[unit].float()
            top = float(w.abs().max())
            pixels = (w / (2 * top) + 0.5) if top > 0 else torch.full_like(w, 0.5)
            image = to_pil(pixels)
            scale = max(1, 64 // max(image.size))
            image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
            smooth = float(grid.smoothness[unit])
            payload = {"shape": list(w.shape), "norm": float(w.norm()), "max_abs": top,
                       "smoothness": None if smooth != smooth else smooth}
            yield Output(self.kind, layer, unit, payload, {**recipe, "params": {**recipe["params"], "unit": unit}},
                         {"image": image})


@register_stage
class EvolutionStrips(Stage):
    """Each unit rendered from every checkpoint with the same seed and chunk, as one strip (Zeiler & Fergus fig. 4)."""

    name = kind = "evolution"
    level = "unit"
    needs = ("checkpoints",)
    title = "evolution strips"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [(layer, unit) for layer, unit, _, _ in ctx.atlas.plan()]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ..featvis import channel, render
        from ..featvis.evolution import Evolution

        checkpoints = ctx.checkpoints()
        for layer, units, keep in _chunks(ctx, todo):
            renders = []
            for k, (_, spec) in enumerate(checkpoints):
                renders.append(render(spec, channel(layer, units), steps=ctx.config.steps, seed=ctx.config.seed,
                                      progress=lambda d, t, k=k, n=len(keep):
                                      ctx.partial(n * (k + d / t) / len(checkpoints))))
            labels = [label for label, _ in checkpoints]
            base = renders[0].recipe.to_dict()["params"]
            for item, unit in enumerate(units):
                if unit not in keep:
                    continue
                recipe = Recipe("evolution", {"checkpoints": [spec.describe() for _, spec in checkpoints]},
                                {**base, "objective": f"{layer}:{unit}", "unit": unit, "item": item,
                                 "checkpoints": list(ctx.config.checkpoints), "labels": labels})
                result = Evolution(images=torch.stack([r.images[item] for r in renders]),
                                   values=torch.stack([r.values[item] for r in renders]), labels=labels,
                                   traces=torch.stack([r.trace[:, item] for r in renders]), recipe=recipe)
                payload = {"labels": labels, "values": [float(v) for v in result.values]}
                yield Output(self.kind, layer, unit, payload, recipe, {"strip": result.to_image()})
