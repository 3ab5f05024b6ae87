"""The dataset-analysis stage: one `analysis.scan` over `--data` for every planned unit, then per unit its top-k
images, receptive-field patches and projections, class purity, statistics with the dead flag, and trust figure
(all about one unit commit together), and per layer its statistics.

The scan ranks inputs by the unit's spatial max (`by="max"`, Zeiler & Fergus's top-9), and the trust figure compares
the same quantity: the unit's spatial max on its stored picture (the PNG the viewer shows, through a float32 forward
of the model) over its spatial max on the best dataset image. Above 1, the picture drives the unit harder than any
image of the dataset does anywhere. The max, not the mean: a conv layer read before its rectifier has a negative
spatial mean on nearly every real image (no ratio at all on fashion-cnn), while its max is positive wherever the
unit fires; and the max is what the top-9 patches show. No ratio is stored when the best dataset value is <= 0 or
too close to zero next to the picture's (`trust_ratio`).

The pass checkpoints its merged state after every shard of `SHARD` items into `CHECKPOINT` in the atlas folder
(`scan`'s own checkpoint: the same result as an uninterrupted pass), so a killed build loses at most the shard in
hand, and a build stopped while it stores the per-unit results does not run the pass again. The file is removed once
every unit's results are stored; one that no longer matches the scan (written by another version) is replaced.
Per-unit results are stored as they come.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterator
from pathlib import Path

import torch

from ..errors import CheckpointError, ConvscopeError
from ..render.core import to_pil
from ..results import Recipe
from .stages import Key, Stage, StageContext, register_stage
from .store import Output

__all__ = ["DatasetScan", "picture_max", "trust_ratio"]

BY = "max"
CHECKPOINT = "scan.checkpoint"  # in the atlas folder while the stage runs
SHARD = 1024  # items per checkpointed shard of the pass (`scan`'s default)
RATIO_MAX = 1000.0  # a best dataset value below 1/1000 of the picture's makes a ratio that only measures noise
PROJECTION = ("guided", "deconvnet")  # the first one the unit's layer supports is stored


def _signed(gradient: torch.Tensor) -> torch.Tensor:
    top = float(gradient.abs().max())
    return gradient / (2 * top) + 0.5 if top > 0 else torch.full_like(gradient, 0.5)


def trust_ratio(render: float, best: float) -> tuple[float | None, str | None]:
    """(render / best, None) when the best dataset value is a real positive activation, else (None, why not): a
    unit no image makes fire (best <= 0, as a conv output read before its ReLU can be), or a best value so close to
    zero next to the picture's that the ratio would exceed `RATIO_MAX` and measure only rounding."""
    if not best > 0:
        return None, "no dataset image makes the unit fire"
    if abs(render) > RATIO_MAX * best:
        return None, f"the best dataset value is below 1/{RATIO_MAX:.0f} of the picture's: too close to zero"
    return render / best, None


def picture_max(ctx: StageContext, keys: list[tuple[str, int]]) -> dict[tuple[str, int], float]:
    """(layer, unit) -> the unit's spatial max on its stored feature-visualization picture (the PNG, read back as
    pixels in [0, 1], fitted to the model's input, one float32 forward per layer and batch of pictures)."""
    from .. import hooks
    from ..data import load_image

    spec = ctx.spec
    wanted: dict[str, list[tuple[int, str]]] = {}
    for layer, unit in keys:
        vis = ctx.atlas.result("featvis", layer, unit)
        if vis is not None and "image" in vis.images:
            wanted.setdefault(layer, []).append((unit, vis.images["image"]))
    found: dict[tuple[str, int], float] = {}
    for layer, items in wanted.items():
        for first in range(0, len(items), 32):
            part = items[first:first + 32]
            pixels = []
            for _, path in part:
                tensor = load_image(ctx.atlas.folder / path, channels=spec.channels)
                if tuple(tensor.shape[-2:]) != tuple(spec.input_size):
                    tensor = spec.fit(tensor[None])[0]
                pixels.append(tensor)
            x = spec.normalize(torch.stack(pixels)).to(spec.device, spec.dtype)
            with hooks.frozen(spec) as work, torch.inference_mode(), hooks.capture(work.module, [layer],
                                                                                     stop=True) as cap:
                cap.run(x)
            out = cap[layer].float()
            for row, (unit, _) in enumerate(part):
                found[(layer, unit)] = float(out[row, unit].amax()) if out.ndim > 2 else float(out[row, unit])
    return found


@register_stage
class DatasetScan(Stage):
    """Top-k examples, purity, statistics, dead flag and trust figure of every unit, from one pass over the data."""

    name = "scan"
    kind = "stats"  # written in the same transaction as the unit's topk, purity and trust rows
    level = "unit"
    needs = ("data",)
    title = "dataset scan"

    def wanted(self, ctx: StageContext) -> list[Key]:
        return [(layer, unit) for layer, unit, _, _ in ctx.atlas.plan()]

    def _scan(self, ctx: StageContext):
        from ..analysis import scan

        plan = ctx.plan()
        units = {layer: sorted(u for chunk in chunks.values() for u in chunk) for layer, chunks in plan.items()}

        def tick(done: int, items: int) -> None:
            ctx.partial(0.5 * done / max(1, items))  # the pass counts as half a unit on the progress bar

        def run(checkpoint: Path):
            return scan(ctx.spec, ctx.config.data, list(units), k=ctx.config.k, by=BY, units=units,
                        limit=ctx.config.scan_limit, engine=ctx.config.engine, address=ctx.config.address,
                        shard_size=SHARD, checkpoint=checkpoint, progress=tick)

        checkpoint = ctx.atlas.folder / CHECKPOINT
        try:
            return run(checkpoint)
        except CheckpointError as error:  # left by another version of the scan: its shards cannot be reused
            ctx.notes.append(f"{CHECKPOINT} was not reused ({error}); the pass ran from the start")
            checkpoint.unlink(missing_ok=True)
            return run(checkpoint)

    def run(self, ctx: StageContext, todo: list[Key]) -> Iterator[list[Output]]:
        result = self._scan(ctx)
        topk, stats = result.topk, result.stats
        recipe = result.recipe.to_dict()
        edges = [float(e) for e in stats.edges]
        pictures = picture_max(ctx, todo)
        for layer, unit in todo:
            layer_stats = stats[layer]
            row = layer_stats.channels.index(unit)
            outputs = [self._topk(topk, layer, unit, recipe), self._stats(layer_stats, row, layer, unit, edges,
                                                                         recipe)]
            trust = self._trust(ctx, topk, layer, unit, recipe, pictures.get((layer, unit)))
            if trust is not None:
                outputs.append(trust)
            purity = topk.purity(layer, unit)
            outputs.append(Output("purity", layer, unit, purity, recipe))
            if unit == max(ctx.atlas.units(layer)):  # the layer's row commits with its last unit
                outputs.append(self._layer(layer_stats, layer, recipe))
            yield outputs
        (ctx.atlas.folder / CHECKPOINT).unlink(missing_ok=True)  # every result is stored: the pass is not needed

    def _topk(self, topk, layer: str, unit: int, recipe: dict) -> Output:
        examples = topk.examples(layer, unit)
        images = {}
        try:
            pictures = topk.unit(layer, unit, projections=PROJECTION) if examples else None
        except ConvscopeError:  # no readable example left: the list stays, without pictures
            pictures = None
        if pictures is not None:
            method = next((m for m in PROJECTION if m in pictures.projections), None)
            for i in range(len(pictures.records)):
                images[f"image:{i}"] = to_pil(pictures.pixels[i])
                images[f"patch:{i}"] = to_pil(pictures.patches[i])
                if method is not None:
                    images[f"projection:{i}"] = to_pil(_signed(pictures.projections[method][i]))
            examples = list(pictures.records)
            recipe = {**recipe, "params": {**recipe["params"], "projection": method, "unit": unit}}
        payload = {"k": topk.k, "by": topk.by, "examples": examples}
        return Output("topk", layer, unit, payload, recipe, images)

    @staticmethod
    def _stats(layer_stats, row: int, layer: str, unit: int, edges: list[float], recipe: dict) -> Output:
        active = float(layer_stats.active_fraction[row])
        payload = {"mean": float(layer_stats.mean[row]), "std": float(layer_stats.std[row]),
                   "max": float(layer_stats.max[row]), "active": active, "sparsity": 1.0 - active,
                   "dead": bool(layer_stats.dead[row]), "inputs": layer_stats.inputs, "by": BY,
                   "histogram": {"edges": edges, "counts": [int(c) for c in layer_stats.hist[row]]}}
        return Output("stats", layer, unit, payload, recipe)

    @staticmethod
    def _trust(ctx: StageContext, topk, layer: str, unit: int, recipe: dict, render: float | None) -> Output | None:
        vis = ctx.atlas.result("featvis", layer, unit)
        examples = topk.examples(layer, unit)
        if vis is None or render is None or not examples:
            return None
        best = float(examples[0]["value"])
        ratio, why = trust_ratio(render, best)
        trust = Recipe("trust", recipe["model"], {"render": vis.recipe.get("params", {}), "scan": recipe["params"],
                                                  "by": BY, "picture": vis.images.get("image"),
                                                  "forward": "float32, the stored 8-bit picture"})
        return Output("trust", layer, unit, {"render_value": render, "best_dataset_value": best, "ratio": ratio,
                                             "best_index": examples[0]["index"], "by": BY,
                                             **({"no_ratio": why} if why else {})}, trust)

    @staticmethod
    def _layer(layer_stats, layer: str, recipe: dict) -> Output:
        fractions = [float(f) for f in layer_stats.active_fraction]
        payload = {"units": len(layer_stats.channels), "dead": layer_stats.dead_units(),
                   "median_sparsity": 1.0 - statistics.median(fractions) if fractions else 1.0,
                   "inputs": layer_stats.inputs}
        return Output("layer_stats", layer, -1, payload, recipe)
