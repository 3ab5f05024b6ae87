"""The stages built on the library as it is: a dataset sample, class models, and per unit its feature
visualization, its filter (first conv layer) and its evolution strip across checkpoints.

Per-unit renders are batched a whole fixed chunk at a time. Unit u of a layer is item u % chunk of chunk
u // chunk, and `render` seeds item i from (seed, i), so a unit's picture depends on the seed, the steps, `--chunk`
and the precision, never on how many units the atlas covers (`--units-per-layer`) nor on which of them a resumed
build still misses: a resume re-renders the chunk of a missing unit and keeps only the units still missing, which
come out exactly as in an uninterrupted build (tested). Independence from `--chunk` too would need `featvis.render`
to seed from a unit's index rather than its position in the batch. The precision of a layer's renders is
resolved once and pinned in the atlas (`render_precision`), since "auto" measures speed in each process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from PIL import Image

from ..render.core import to_pil
from ..results import Recipe
from .stages import Key, Stage, StageContext, register_stage
from .store import Output

__all__ = ["DatasetSample", "ClassModels", "FeatureVisualization", "Filters", "EvolutionStrips", "sample_indices",
           "THUMB", "render_chunk", "render_precision"]

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
        precision = pinned_precision(ctx, "precision:class_model",
                                     lambda: class_model(ctx.spec, classes, steps=1, seed=ctx.config.seed))
        vis = class_model(ctx.spec, classes, steps=ctx.config.steps, seed=ctx.config.seed, precision=precision,
                          progress=lambda d, t: ctx.partial(len(todo) * d / t))
        recipe = vis.recipe.to_dict()
        for item, index in enumerate(classes):
            if ("", index) in todo:
                payload = {"class": index, "name": ctx.spec.class_name(index), "value": float(vis.values[item]),
                           "item": item}
                yield Output(self.kind, "", index, payload, {**recipe, "params": {**recipe["params"], "item": item}},
                             _with_thumb(vis.image(item)))


def pinned_precision(ctx: StageContext, key: str, trial: Callable[[], Any]) -> str:
    """`--precision` when it names one; for "auto", the precision a one-step `trial()` render chose (its recipe's
    `precision`) the first time, pinned in the atlas under `key` from then on."""
    if ctx.config.precision != "auto":
        return ctx.config.precision
    return ctx.pinned(key, lambda: trial().recipe.params["precision"])


def render_precision(ctx: StageContext, layer: str, units: list[int]) -> str:
    """The precision every render of `layer` runs in: for "auto", what `featvis.render` measures on one step of a
    whole chunk (`pinned_precision`)."""
    from ..featvis import channel, render

    return pinned_precision(ctx, f"precision:featvis:{layer}", lambda: render(
        ctx.spec, channel(layer, units), steps=1, seed=ctx.config.seed, precision="auto"))


def render_chunk(spec, layer: str, units: list[int], steps: int, seed: int, precision: str,
                 progress: Callable[[int, int], None] | None = None):
    """One chunk's render: the same inputs give the same `Visualization` in any process (a Ray task too)."""
    from ..featvis import channel, render

    return render(spec, channel(layer, units), steps=steps, seed=seed, precision=precision, progress=progress)


@register_stage
class FeatureVisualization(Stage):
    """Each unit's feature visualization: `featvis.render` of a whole chunk of a layer's channels at once."""

    name = kind = "featvis"
    level = "unit"
    title = "feature visualizations"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [(layer, unit) for layer, unit, _, _ in ctx.atlas.plan()]

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[Output]:
        from ._ray import run_chunks

        chunks = list(_chunks(ctx, todo))
        keep = {(layer, tuple(units)): kept for layer, units, kept in chunks}
        jobs = [(layer, units, ctx.config.steps, ctx.config.seed, render_precision(ctx, layer, units))
                for layer, units, _ in chunks]
        if ctx.config.engine == "ray":
            found = run_chunks(ctx, render_chunk, jobs)
        else:  # in order, with the steps of the chunk in hand on the progress bar
            found = ((job, self._local(ctx, job, len(keep[(job[0], tuple(job[1]))]))) for job in jobs)
        reuse = ctx.config.model in ctx.config.checkpoints
        for (layer, units, _, _, precision), vis in found:
            if reuse:
                ctx.renders[(layer, tuple(units), precision)] = vis
            recipe = vis.recipe.to_dict()
            kept = keep[(layer, tuple(units))]
            for item, unit in enumerate(units):
                if unit not in kept:
                    continue
                payload = {"value": float(vis.values[item]), "start_value": float(vis.start_values[item]),
                           "render_dead": item in vis.dead, "chunk": units, "item": item}
                params = {**recipe["params"], "unit": unit, "item": item}
                yield Output(self.kind, layer, unit, payload, {**recipe, "params": params},
                             _with_thumb(vis.image(item)))

    @staticmethod
    def _local(ctx: StageContext, job: tuple, count: int):
        """`render_chunk` in this process, with the chunk's steps on the progress bar."""
        return render_chunk(ctx.spec, *job, progress=lambda d, t: ctx.partial(count * d / t))


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
            precision = render_precision(ctx, layer, units)
            for k, (_, spec) in enumerate(checkpoints):
                same = ctx.renders.get((layer, tuple(units), precision))  # the model itself, rendered just before
                if same is not None and ctx.config.checkpoints[k] == ctx.config.model:
                    renders.append(same)
                    continue
                renders.append(render(spec, channel(layer, units), steps=ctx.config.steps, seed=ctx.config.seed,
                                      precision=precision, progress=lambda d, t, k=k, n=len(keep):
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
