"""Attribution pictures: heatmaps over images with colour bars, and panels comparing methods.

Normalization is always an explicit choice:
- a map is divided by a `scale`; by default the `percentile` (99th) of its |values|, so a few extreme pixels do not
  wash the rest out (values above are clipped, and the colour bar says so with ">");
- non-negative maps (Grad-CAM, |gradient|) run from 0 to scale on a sequential colormap ("inferno"); signed maps
  (Integrated Gradients) run from -scale to +scale on a diverging one ("coolwarm", 0 in the middle);
- in a panel, `normalization="method"` shares one scale per method across the images of the panel (their
  magnitudes are then comparable), "each" scales every tile on its own, "all" shares one scale across everything
  (only meaningful when all maps have the same units).
The heatmap is laid over a desaturated copy of the image, more opaque where the map is stronger.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

from .core import Colormap, _font, colorize, label

if TYPE_CHECKING:  # render never imports the computing side at run time
    from ..attribution._core import Attribution

__all__ = ["map_scale", "heatmap", "overlay", "colorbar", "attribution_image", "attribution_panel", "curve_plot",
           "randomization_strip"]

Normalization = Literal["each", "method", "all"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().double().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def map_scale(maps: torch.Tensor | np.ndarray | Sequence[torch.Tensor], percentile: float = 99.0) -> float:
    """The normalization divisor of one map or several: the `percentile` of their |values| (100: the maximum);
    falls back to the maximum when the percentile is 0 (sparse maps) and to 1 for an all-zero map."""
    values = np.concatenate([np.abs(_np(m)).ravel() for m in (maps if isinstance(maps, (list, tuple)) else [maps])])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 1.0
    scale = float(np.percentile(values, percentile))
    if scale <= 0:
        scale = float(values.max())
    return scale if scale > 0 else 1.0


def heatmap(map2d: torch.Tensor | np.ndarray, *, scale: float | None = None, signed: bool | None = None,
            percentile: float = 99.0, cmap: Colormap | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """A map (H, W) -> (RGB uint8 (H, W, 3), strength in [0, 1] (H, W), info) with info = {lo, hi, signed, cmap,
    clipped}. `signed=None` decides from the data (any negative value)."""
    a = np.nan_to_num(_np(map2d))
    signed = bool(a.min() < 0) if signed is None else signed
    scale = map_scale(a, percentile) if scale is None else float(scale)
    cmap = cmap or ("coolwarm" if signed else "inferno")
    if signed:
        v = np.clip(a / scale, -1, 1)
        rgb, strength = colorize(v * 0.5 + 0.5, cmap), np.abs(v)
        lo = -scale
    else:
        v = np.clip(a / scale, 0, 1)
        rgb, strength = colorize(v, cmap), v
        lo = 0.0
    info = {"lo": lo, "hi": scale, "signed": signed, "cmap": cmap, "clipped": bool(np.abs(a).max() > scale * 1.0001)}
    return rgb, strength, info


def _background(pixels: torch.Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) tensor or (H, W[, C]) array in [0, 1] -> (H, W, 3) float RGB."""
    a = _np(pixels)
    if isinstance(pixels, torch.Tensor) and a.ndim == 3:
        a = a.transpose(1, 2, 0)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[2] == 1:
        a = np.repeat(a, 3, 2)
    return np.clip(a[..., :3], 0, 1)


def overlay(pixels: torch.Tensor | np.ndarray, map2d: torch.Tensor | np.ndarray, *, alpha: float = 0.8,
            scale: float | None = None, signed: bool | None = None, percentile: float = 99.0,
            cmap: Colormap | None = None) -> tuple[Image.Image, dict[str, Any]]:
    """The heatmap of `map2d` (H, W) over the image `pixels` ((C, H, W) in [0, 1]) -> (PIL image, heatmap info).

    The image is desaturated and dimmed; the colour covers it in proportion to the map's strength (up to `alpha`).
    """
    rgb, strength, info = heatmap(map2d, scale=scale, signed=signed, percentile=percentile, cmap=cmap)
    image = _background(pixels)
    if image.shape[:2] != rgb.shape[:2]:
        raise ValueError(f"map {rgb.shape[:2]} and image {image.shape[:2]} differ in size")
    gray = image.mean(2, keepdims=True)
    base = 0.25 * image + 0.55 * gray + 0.1
    weight = alpha * np.sqrt(strength)[..., None]
    out = base * (1 - weight) + (rgb / 255.0) * weight
    return Image.fromarray((np.clip(out, 0, 1) * 255).round().astype(np.uint8), "RGB"), info


_blend = overlay  # `attribution_image` has an `overlay` flag shadowing the function


def _fmt(value: float) -> str:
    return f"{value:.2g}" if abs(value) < 1e4 else f"{value:.1e}"


def colorbar(info: dict[str, Any], *, length: int, thickness: int = 10, vertical: bool = True,
             size: int = 11) -> Image.Image:
    """A colour bar for heatmap `info`, `length` pixels long, with its end (and zero) values written beside it."""
    values = np.linspace(1, 0, length) if vertical else np.linspace(0, 1, length)
    strip = colorize(np.repeat(values[:, None] if vertical else values[None, :], thickness, 1 if vertical else 0),
                     info["cmap"])
    bar = Image.fromarray(strip, "RGB")
    font = _font(size)
    top = (">" if info["clipped"] else "") + _fmt(info["hi"])  # the default font has no "≥"
    bottom = ("<" if info["clipped"] and info["signed"] else "") + _fmt(info["lo"])
    if vertical:
        text_w = int(max(font.getlength(t) for t in (top, bottom))) + 4
        out = Image.new("RGB", (thickness + text_w + 2, length), "white")
        out.paste(bar, (0, 0))
        draw = ImageDraw.Draw(out)
        draw.text((thickness + 3, 0), top, fill="black", font=font)
        draw.text((thickness + 3, length - size - 2), bottom, fill="black", font=font)
        if info["signed"]:
            draw.text((thickness + 3, length // 2 - size // 2), "0", fill="black", font=font)
        return out
    out = Image.new("RGB", (length, thickness + size + 4), "white")
    out.paste(bar, (0, 0))
    draw = ImageDraw.Draw(out)
    draw.text((1, thickness + 1), bottom, fill="black", font=font)
    draw.text((length - font.getlength(top) - 1, thickness + 1), top, fill="black", font=font)
    if info["signed"]:
        draw.text((length // 2 - 3, thickness + 1), "0", fill="black", font=font)
    return out


def _pixels(result: "Attribution", index: int) -> torch.Tensor:
    x = result.inputs[index]
    if result.spec is not None and (result.spec.mean is not None or result.spec.std is not None):
        return result.spec.denormalize(x.unsqueeze(0))[0].clamp(0, 1)
    lo, hi = float(x.min()), float(x.max())
    return ((x - lo) / (hi - lo)).clamp(0, 1) if hi > lo else torch.zeros_like(x)


def _resize(image: Image.Image, cell: int | None) -> Image.Image:
    if cell is None or max(image.size) == cell:
        return image
    factor = cell / max(image.size)
    resample = Image.NEAREST if factor >= 2 else Image.BILINEAR
    return image.resize((round(image.width * factor), round(image.height * factor)), resample)


def attribution_image(result: "Attribution", index: int = 0, *, overlay: bool = True, scale: float | None = None,
                      percentile: float = 99.0, cmap: Colormap | None = None, bar: bool = True,
                      cell: int | None = None, alpha: float = 0.8) -> Image.Image:
    """Input `index` of an `Attribution` as one picture: the heatmap over the image (or alone with
    `overlay=False`), resized to `cell` pixels, with a vertical colour bar and a caption naming method and target."""
    if not 0 <= index < len(result):
        raise IndexError(f"index {index} out of range for {len(result)} maps")
    pixels = _pixels(result, index)
    if overlay:
        tile, info = _blend(pixels, result.map[index], scale=scale, percentile=percentile, cmap=cmap, alpha=alpha)
    else:
        rgb, _, info = heatmap(result.map[index], scale=scale, percentile=percentile, cmap=cmap)
        tile = Image.fromarray(rgb, "RGB")
    tile = _resize(tile, cell or max(160, max(tile.size)))
    if bar:
        strip = colorbar(info, length=tile.height)
        framed = Image.new("RGB", (tile.width + 4 + strip.width, tile.height), "white")
        framed.paste(tile, (0, 0))
        framed.paste(strip, (tile.width + 4, 0))
        tile = framed
    return label(tile, _caption(result, index), size=12)


def _caption(result: "Attribution", index: int) -> str:
    target = result.recipe.params.get("target")
    if result.classes is not None:
        name = result.spec.class_name(int(result.classes[index])) if result.spec else str(int(result.classes[index]))
        target = name.split(",")[0]
    return f"{result.method}: {target}"


def attribution_panel(results: Sequence["Attribution"], *, captions: Sequence[Sequence[str]] | None = None,
                      image_labels: Sequence[str] | None = None, normalization: Normalization = "method",
                      percentile: float = 99.0, cell: int | None = None, title: str | None = None,
                      alpha: float = 0.8, columns: int | None = None) -> Image.Image:
    """Methods side by side: one row per input, the image first, then each result's map over it.

    Args:
        results: one `Attribution` per method, all for the same inputs (B each).
        captions: `captions[m][b]` written under method m's map of input b (e.g. deletion/insertion scores).
        image_labels: written under each input image (e.g. the predicted class).
        normalization: "method" (one scale per method across the inputs; default), "each", or "all".
        percentile, alpha: see `overlay`; cell: tile size in pixels (default: the input size, at least 160).
        columns: wrap each input's row after this many tiles (the image counts as one); None: no wrapping.
    """
    if not results:
        raise ValueError("attribution_panel needs at least one result")
    if normalization not in ("each", "method", "all"):
        raise ValueError(f"normalization must be 'each', 'method' or 'all', got {normalization!r}")
    batch = len(results[0])
    if any(len(r) != batch for r in results):
        raise ValueError("all results of a panel must explain the same inputs")
    cell = cell or max(160, max(results[0].map.shape[1:]))
    shared_all = map_scale([r.map for r in results], percentile) if normalization == "all" else None
    font = _font(13)
    rows = []
    for b in range(batch):
        pixels = _pixels(results[0], b)
        image = _resize(Image.fromarray((_background(pixels) * 255).round().astype(np.uint8), "RGB"), cell)
        tiles = [_tile("input", image, None, image_labels[b] if image_labels else "", cell, font)]
        for m, result in enumerate(results):
            scale = shared_all if normalization == "all" else \
                map_scale(result.map, percentile) if normalization == "method" else None
            picture, info = overlay(pixels, result.map[b], scale=scale, percentile=percentile, alpha=alpha)
            caption = captions[m][b] if captions else ""
            tiles.append(_tile(result.method, _resize(picture, cell), info, caption, cell, font))
        width = columns or len(tiles)
        rows += [_hstack(tiles[i:i + width], pad=6) for i in range(0, len(tiles), width)]
    out = _vstack(rows, pad=8)
    note = {"method": "one scale per method across the images", "each": "each map scaled on its own",
            "all": "one scale for all maps"}[normalization]
    heading = (title + "   " if title else "") + f"(normalization: {note}; clipped at the {percentile:g}th " \
        "percentile of |map|)"
    return label(out, heading, size=13, where="top")


def _tile(name: str, picture: Image.Image, info: dict[str, Any] | None, caption: str, cell: int, font) -> Image.Image:
    line = 17
    bar = colorbar(info, length=cell, thickness=8, vertical=False) if info else None
    height = line + cell + (bar.height if bar else 0) + 2 * line + 4
    out = Image.new("RGB", (cell, height), "white")
    draw = ImageDraw.Draw(out)
    draw.text((2, 1), name, fill="black", font=font)
    out.paste(picture, (0, line))
    y = line + picture.height + 2
    if bar:
        out.paste(bar, (0, y))
        y += bar.height
    for k, text in enumerate(caption.split("\n")[:2]):
        draw.text((2, y + k * line), text, fill="black", font=_font(12))
    return out


def _hstack(images: Sequence[Image.Image], pad: int) -> Image.Image:
    out = Image.new("RGB", (sum(i.width for i in images) + pad * (len(images) + 1), max(i.height for i in images)),
                    "white")
    x = pad
    for image in images:
        out.paste(image, (x, 0))
        x += image.width + pad
    return out


def _vstack(images: Sequence[Image.Image], pad: int) -> Image.Image:
    out = Image.new("RGB", (max(i.width for i in images), sum(i.height for i in images) + pad * (len(images) + 1)),
                    "white")
    y = pad
    for image in images:
        out.paste(image, (0, y))
        y += image.height + pad
    return out


def curve_plot(curves: Any, *, width: int = 360, height: int = 240, max_lines: int = 8) -> Image.Image:
    """Deletion/insertion `Curves` as a line plot: one thin line per input (up to `max_lines`), the mean in bold."""
    data = _np(curves.curves)
    fractions = _np(curves.fractions)
    left, right, top, bottom = 46, 12, 24, 34
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    font = _font(11)
    hi = max(float(data.max()), 1e-12) if curves.score != "probability" else 1.0
    lo = min(float(data.min()), 0.0)

    def point(f: float, v: float) -> tuple[float, float]:
        return (left + f * (width - left - right),
                top + (1 - (v - lo) / (hi - lo if hi > lo else 1)) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for line in data[:max_lines]:
        draw.line([point(f, v) for f, v in zip(fractions, line)], fill=(150, 150, 200), width=1)
    draw.line([point(f, v) for f, v in zip(fractions, data.mean(0))], fill=(180, 20, 40), width=3)
    draw.text((left, 4), f"{curves.kind}: mean AUC {float(_np(curves.auc).mean()):.3f}", fill="black", font=font)
    draw.text((left, height - bottom + 4), "0", fill="black", font=font)
    draw.text((width - right - 20, height - bottom + 4), "100%", fill="black", font=font)
    draw.text((left + 40, height - bottom + 16), "fraction of pixels " + (
        "removed" if curves.kind == "deletion" else "inserted"), fill="black", font=font)
    draw.text((4, top), _fmt(hi), fill="black", font=font)
    draw.text((4, height - bottom - 12), _fmt(lo), fill="black", font=font)
    draw.text((4, (top + height - bottom) // 2 - 6), {"probability": "prob."}.get(curves.score, curves.score),
              fill="black", font=font)
    return out


def randomization_strip(check: Any, index: int = 0, *, cell: int = 128, percentile: float = 99.0) -> Image.Image:
    """The original map of input `index`, then its map after each randomization checkpoint, with correlations."""
    maps = [check.original[index]] + [m[index] for m in check.maps]
    names = ["original"] + [f"top {d}: {layer}"[:24] for d, layer in zip(check.depth, check.layers)]
    notes = [""] + [f"rho = {float(c[index]):.2f}" for c in check.correlations]
    font = _font(12)
    tiles = []
    for picture, name, note in zip(maps, names, notes):
        rgb, _, info = heatmap(picture, percentile=percentile)
        tiles.append(_tile(name, _resize(Image.fromarray(rgb, "RGB"), cell), info, note, cell, font))
    verdict = "FLAGGED: the map survives randomization" if check.flagged else "passed: the map depends on the weights"
    return label(_hstack(tiles, pad=6), f"{check.method} randomization check ({verdict}; threshold "
                 f"{check.threshold:g})", size=13, where="top")
