"""Drawing the dataset-analysis results: pure numpy/PIL from tensors the results hold (nothing here runs a model)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..data import batches
from ..render.core import _font, label, to_pil
from ..render.grids import _header, vector_strip

__all__ = ["unit_montage", "topk_overview", "stats_picture", "PAD_COLOR"]

PAD_COLOR = (214, 48, 160)  # where a receptive field reaches past the image border: visibly not image


def _rgb(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8."""
    array = np.asarray(to_pil(image.clamp(0, 1)).convert("RGB"))
    return array.copy()


def _padded(image: torch.Tensor, mask: torch.Tensor) -> Image.Image:
    """A patch with the area outside the image hatched in `PAD_COLOR`."""
    array = _rgb(image)
    outside = ~mask.numpy()
    hatch = (np.add.outer(np.arange(array.shape[0]), np.arange(array.shape[1])) // 2) % 2 == 0
    array[outside & hatch] = PAD_COLOR
    array[outside & ~hatch] = (250, 250, 250)
    return Image.fromarray(array, "RGB")


def _signed(projection: torch.Tensor) -> torch.Tensor:
    """A projection (C, h, w) -> [0, 1] with 0 at mid-grey, scaled by its own largest |value|."""
    top = float(projection.abs().max())
    return (projection / top * 0.5 + 0.5) if top > 0 else torch.full_like(projection, 0.5)


def _cell(image: Image.Image, cell: int) -> Image.Image:
    scale = cell / max(image.width, image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST if scale >= 1 else Image.BOX)


def _row(tiles: list[Image.Image], captions: list[str], name: str, cell: int) -> Image.Image:
    band, left, pad = 14, 74, 3
    out = Image.new("RGB", (left + len(tiles) * (cell + pad), cell + band + pad), "white")
    draw = ImageDraw.Draw(out)
    draw.text((4, cell // 2 - 6), name, fill="black", font=_font(11))
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x = left + i * (cell + pad)
        out.paste(_cell(tile, cell), (x, 0))
        draw.text((x, cell + 1), caption, fill="black", font=_font(9))
    return out


def _stack(parts: list[Image.Image]) -> Image.Image:
    width = max(p.width for p in parts)
    out = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    return out


def _purity_line(purity: dict[str, Any], n: int) -> str:
    if not purity.get("majority"):
        return ""
    count = next(iter(purity["histogram"].values()))
    return f"class purity: {purity['majority']} {count}/{n} ({purity['fraction']:.0%})"


def unit_montage(ex: Any, *, cell: int = 72) -> Image.Image:
    """Images (receptive field outlined), patches (padding hatched), then one row per projection."""
    images = []
    for i, (top, left, bottom, right) in enumerate(ex.boxes):
        image = Image.fromarray(_rgb(ex.pixels[i]), "RGB")
        scale = cell / max(image.width, image.height)
        image = _cell(image, cell)
        draw = ImageDraw.Draw(image)
        draw.rectangle([left * scale, top * scale, right * scale - 1, bottom * scale - 1], outline=(255, 200, 0))
        images.append(image)
    captions = [f"{r['value']:.3g} {r['class'][:9]}" for r in ex.records]
    rows = [_row(images, captions, "images", cell)]
    patches = [_padded(ex.patches[i], ex.masks[i]) for i in range(len(ex.records))]
    rows.append(_row(patches, [f"#{r['index']}" for r in ex.records], "patches", cell))
    for method, grads in ex.projections.items():
        tiles = [_padded(_signed(grads[i]), ex.masks[i]) for i in range(len(ex.records))]
        rows.append(_row(tiles, [""] * len(tiles), method, cell))
    by = ex.recipe.params.get("scan", {}).get("by", "max")
    title = [f"{ex.layer}:{ex.channel}  top-{len(ex.records)} inputs by spatial {by}",
             _purity_line(ex.purity, len(ex.records))]
    return _header(_stack(rows), title)


def topk_overview(topk: Any, spec: Any, dataset: Any, layer: str, units: int) -> Image.Image:
    """Each row a unit's top-k images with their values; the row name gives the unit and its majority class."""
    t = topk[layer]
    wanted = sorted({int(i) for i in t.indices[:units].flatten().tolist() if i >= 0})
    pixels: dict[int, torch.Tensor] = {}
    for batch in batches(dataset, spec, max(1, min(256, len(wanted))), order=wanted):
        pixels.update({int(i): p for i, p in zip(batch.indices, batch.pixels)})
    rows = []
    for channel in t.channels[:units]:
        examples = [e for e in topk.examples(layer, channel) if e["index"] in pixels]
        if not examples:
            continue
        tiles = [Image.fromarray(_rgb(pixels[e["index"]]), "RGB") for e in examples]
        majority = topk.purity(layer, channel).get("majority") or ""
        rows.append(_row(tiles, [f"{e['value']:.3g}" for e in examples], f"{channel} {majority[:10]}", 40))
    if not rows:
        return label(Image.new("RGB", (320, 40), "white"), f"{layer}: no examples")
    return _header(_stack(rows), [f"{layer}: top-{topk.k} inputs per unit (by spatial {topk.by})"])


def stats_picture(stats: Any, *, width: int = 640) -> Image.Image:
    """Per layer: the fraction of inputs each unit fires on, with the summary (units, dead, median) above it."""
    parts = []
    for name, s in stats.layers.items():
        summary = s.summary()
        dead = summary["dead_units"]
        listed = ", ".join(map(str, dead[:16])) + (" ..." if len(dead) > 16 else "")
        title = [f"{name}: {summary['units']} units, {summary['dead']} dead{' (' + listed + ')' if dead else ''}, "
                 f"median fraction of inputs active {summary['median_active']:.2f}"]
        parts.append(vector_strip(s.active_fraction.float(), title=title))
    picture = _stack(parts)
    if picture.width > width * 2:
        picture = picture.resize((width * 2, round(picture.height * width * 2 / picture.width)), Image.BOX)
    return picture
