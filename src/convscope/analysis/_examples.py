"""One unit's top-k as pictures: the images, the receptive-field patch at each example's max, and the projection of
that one unit back to pixel space (DeconvNet, guided backprop), as in Zeiler & Fergus's figures."""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from ..data import batches
from ..errors import TargetError
from ..hooks import frozen
from ..layers import Unit
from ..results import Recipe, ResultMixin

__all__ = ["UnitExamples", "unit_examples", "unit_projections", "crop", "PROJECTIONS"]

PROJECTIONS = ("deconvnet", "guided")

# Receptive fields per model and layer: tracing the model once per layer, not once per unit drawn.
_FIELDS: "weakref.WeakKeyDictionary[Any, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _field(spec: Any, layer: str) -> Any:
    from ..receptive import receptive_fields

    known = _FIELDS.setdefault(spec.module, {})
    if layer not in known:
        known[layer] = receptive_fields(spec, layers=[layer]).get(layer)
    return known[layer]


@dataclass(frozen=True, eq=False)
class UnitExamples(ResultMixin):
    """A unit's top-k examples, ready to draw (n <= k examples, best first).

    Attributes:
        layer, channel: the unit; records: per example {index, source, label, class, value, row, col}.
        pixels: (n, C, H, W) the inputs as the model saw them, [0, 1].
        boxes: per example (top, left, bottom, right) of the receptive field in input pixels (bottom/right
            exclusive; may reach past the border).
        patches: (n, C, h, w) the pixels inside each box; `masks` (n, h, w) True where the box lies inside the image
            (elsewhere the patch is padding, drawn visibly).
        projections: method -> (n, C, h, w) the input gradient of the unit at the example's position under that
            method's rectifier rule, cropped to the box.
        purity: the label histogram of the examples, majority class and its fraction.
        recipe: how it was made.
    """

    layer: str
    channel: int
    records: tuple[dict[str, Any], ...]
    pixels: torch.Tensor
    boxes: tuple[tuple[int, int, int, int], ...]
    patches: torch.Tensor
    masks: torch.Tensor
    projections: dict[str, torch.Tensor]
    purity: dict[str, Any]
    recipe: Recipe

    def to_image(self, *, cell: int = 72) -> Image.Image:
        """Rows: images (the field's box drawn), patches, one row per projection; values and labels under them."""
        from ._montage import unit_montage

        return unit_montage(self, cell=cell)


def crop(images: torch.Tensor, boxes: list[tuple[int, int, int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, C, H, W) and one box per image (same size) -> patches (n, C, h, w) zero-padded where a box reaches
    past the border, and masks (n, h, w) True inside the image."""
    n, channels, height, width = images.shape
    h, w = boxes[0][2] - boxes[0][0], boxes[0][3] - boxes[0][1]
    patches = images.new_zeros(n, channels, h, w)
    masks = torch.zeros(n, h, w, dtype=torch.bool)
    for i, (top, left, bottom, right) in enumerate(boxes):
        y0, x0, y1, x1 = max(0, top), max(0, left), min(height, bottom), min(width, right)
        if y1 <= y0 or x1 <= x0:
            continue
        patches[i, :, y0 - top:y1 - top, x0 - left:x1 - left] = images[i, :, y0:y1, x0:x1]
        masks[i, y0 - top:y1 - top, x0 - left:x1 - left] = True
    return patches, masks


def _position_target(layer: str, channel: int, rows: torch.Tensor, cols: torch.Tensor):
    """A target scoring each input at its own position: input b's score is `layer[b, channel, rows[b], cols[b]]`
    (the unit's value itself for (B, F) layers). Inputs are independent, so one backward gives every example's
    gradient of `LAYER:CHANNEL@ROW,COL`."""
    from ..attribution._core import ResolvedTarget

    def score(_output: torch.Tensor, cap: Any) -> torch.Tensor:
        act = cap[layer]
        batch = torch.arange(act.shape[0], device=act.device)
        if act.ndim == 2:
            return act[:, channel]
        return act[batch, channel, rows.to(act.device), cols.to(act.device)]

    return ResolvedTarget(f"unit {layer}:{channel} at each example's max", score, layer=layer,
                          unit=Unit(layer, channel))


def unit_projections(spec: Any, inputs: torch.Tensor, layer: str, channel: int, rows: torch.Tensor, cols: torch.Tensor,
                methods: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """method -> (n, C, H, W) gradients of unit `layer:channel` at (rows[i], cols[i]) for each input i."""
    from ..attribution.gradients import input_gradients

    for method in methods:
        if method not in PROJECTIONS:
            raise TargetError(f"projection {method!r}: choose from {', '.join(PROJECTIONS)}")
    out = {}
    target = _position_target(layer, channel, rows, cols)
    with frozen(spec.module) as net:
        work = dataclasses.replace(spec, module=net)
        for method in methods:
            try:
                grads, _, _ = input_gradients(work, inputs, target, rule=method, method=method)
            except TargetError:  # no rectifier in front of the layer: the rule changes nothing to show
                continue
            out[method] = grads.detach().cpu()
    return out


def unit_examples(topk: Any, spec: Any, dataset: Any, layer: str, channel: int, *,
                  projections: tuple[str, ...] = PROJECTIONS) -> UnitExamples:
    """Build the pictures of unit `layer:channel` of a `TopK` on the model and dataset it was made on."""
    records = topk.examples(layer, channel)
    indices = [r["index"] for r in records]
    pixels, inputs, kept = [], [], set()
    for batch in batches(dataset, spec, max(1, len(indices)), order=indices):
        pixels.append(batch.pixels)
        inputs.append(batch.inputs)
        kept.update(int(i) for i in batch.indices)
    records = [r for r in records if r["index"] in kept]
    if not records:
        raise TargetError(f"unit {layer}:{channel} has no readable examples")
    pixels_t, inputs_t = torch.cat(pixels), torch.cat(inputs)
    field = _field(spec, layer)
    height, width = pixels_t.shape[-2:]
    spatial = records[0]["row"] >= 0 and field is not None and not field.uniform and field.stride is not None
    boxes = [field.box(r["row"], r["col"]) if spatial else (0, 0, height, width) for r in records]
    patches, masks = crop(pixels_t, boxes)
    rows = torch.tensor([r["row"] for r in records])
    cols = torch.tensor([r["col"] for r in records])
    grads = unit_projections(spec, inputs_t, layer, channel, rows, cols, tuple(projections))
    cropped = {method: crop(g, boxes)[0] for method, g in grads.items()}
    recipe = Recipe(kind="topk-unit", model=spec.describe(),
                    params={"layer": layer, "unit": channel, "scan": topk.recipe.params,
                            "field": field.to_dict() if field is not None else None,
                            "projections": list(cropped)})
    return UnitExamples(layer, channel, tuple(records), pixels_t.cpu(), tuple(boxes), patches.cpu(), masks, cropped,
                        topk.purity(layer, channel), recipe)
