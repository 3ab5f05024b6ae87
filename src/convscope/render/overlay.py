"""Attribution pictures: heatmaps over images with colour bars, the signed-gradient RGB view, and panels comparing
methods.

Normalization is always an explicit choice:
- a map is divided by a `scale`; by default the `percentile` (99th) of its |values|, so a few extreme pixels do not
  wash the rest out (values above are clipped, and the colour bar says so with ">");
- non-negative maps (Grad-CAM, |gradient|) run from 0 to scale on a sequential colormap ("inferno"); signed maps
  (Integrated Gradients, occlusion) run from -scale to +scale on a diverging one ("coolwarm", 0 in the middle);
- in a panel, `normalization="each"` (default, as Captum's and pytorch-grad-cam's pictures) scales every map on its
  own, "method" shares one scale per method across the images of the panel (their magnitudes are then comparable),
  "all" shares one scale across everything (only meaningful when all maps have the same units).
The heatmap is laid over a desaturated copy of the image, more opaque where the map is stronger.

`view="rgb"` draws instead the signed gradient itself as a colour image around mid grey, the way Springenberg et al.
(guided backpropagation) and Zeiler & Fergus (DeconvNet) show their reconstructions: 0 is grey, each channel runs
from black (-scale) to full (+scale), with the gradient taken with respect to pixel values (divided by the model's
per-channel std) so its colours are the image's colours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

from ._text import draw_lines, line_height, titled, wrap
from .core import Colormap, _font, colorize

if TYPE_CHECKING:  # render never imports the computing side at run time
    from ..attribution._core import Attribution

__all__ = ["map_scale", "heatmap", "overlay", "signed_rgb", "colorbar", "attribution_image", "attribution_panel",
           "curve_plot", "DEFAULT_VIEWS"]

Normalization = Literal["each", "method", "all"]
View = Literal["heatmap", "rgb"]
# How `attribution_panel` draws each method unless told otherwise: guided backprop as the paper shows it.
DEFAULT_VIEWS: dict[str, View] = {"guided": "rgb"}


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


def signed_rgb(gradient: torch.Tensor | np.ndarray, *, scale: float | None = None, percentile: float = 99.0,
               ) -> tuple[np.ndarray, dict[str, Any]]:
    """A signed gradient (C, H, W) (C = 1 or 3) -> (RGB uint8 (H, W, 3), info): `0.5 + 0.5 * g / scale` per channel,
    clipped, so 0 is mid grey (Springenberg et al.'s and Zeiler & Fergus's way of showing a reconstruction). `scale`
    defaults to the `percentile` of |g| over all channels; `info` describes the grey colour bar (-scale .. +scale)."""
    g = np.nan_to_num(_np(gradient))
    if g.ndim != 3:
        raise ValueError(f"signed_rgb needs a gradient (C, H, W), got shape {g.shape}")
    scale = map_scale(g, percentile) if scale is None else float(scale)
    values = np.clip(g / scale, -1, 1) * 0.5 + 0.5
    rgb = values.transpose(1, 2, 0)
    rgb = np.repeat(rgb[..., :1], 3, 2) if rgb.shape[2] == 1 else rgb[..., :3]
    info = {"lo": -scale, "hi": scale, "signed": True, "cmap": "gray",
            "clipped": bool(np.abs(g).max() > scale * 1.0001)}
    return (rgb * 255).round().astype(np.uint8), info


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


def pixel_gradient(result: "Attribution", index: int) -> torch.Tensor:
    """Input `index`'s signed attributions (C, H, W) with respect to pixel values: the gradient with respect to the
    normalized input divided by the model's per-channel std (unchanged when the model has none)."""
    g = result.attributions[index].detach()
    if result.spec is not None and result.spec.std is not None and g.shape[0] == len(result.spec.std):
        g = g / torch.tensor(result.spec.std, dtype=g.dtype, device=g.device).view(-1, 1, 1)
    return g


def _resize(image: Image.Image, cell: int | None) -> Image.Image:
    if cell is None or max(image.size) == cell:
        return image
    factor = cell / max(image.size)
    resample = Image.NEAREST if factor >= 2 else Image.BILINEAR
    return image.resize((round(image.width * factor), round(image.height * factor)), resample)


def _check_view(view: str) -> None:
    if view not in ("heatmap", "rgb"):
        raise ValueError(f"view must be 'heatmap' or 'rgb', got {view!r}")


def attribution_image(result: "Attribution", index: int = 0, *, view: View = "heatmap", overlay: bool = True,
                      scale: float | None = None, percentile: float = 99.0, cmap: Colormap | None = None,
                      bar: bool = True, cell: int | None = None, alpha: float = 0.8) -> Image.Image:
    """Input `index` of an `Attribution` as one picture, resized to `cell` pixels, with a vertical colour bar and a
    caption naming method and target: `view="heatmap"` draws the map over the image (or alone with
    `overlay=False`); `view="rgb"` draws the signed gradient as a colour image around grey (`signed_rgb`)."""
    if not 0 <= index < len(result):
        raise IndexError(f"index {index} out of range for {len(result)} maps")
    _check_view(view)
    if view == "rgb":
        rgb, info = signed_rgb(pixel_gradient(result, index), scale=scale, percentile=percentile)
        tile = Image.fromarray(rgb, "RGB")
    elif overlay:
        tile, info = _blend(_pixels(result, index), result.map[index], scale=scale, percentile=percentile, cmap=cmap,
                            alpha=alpha)
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
    return titled(tile, _caption(result, index) + (" (signed gradient, grey = 0)" if view == "rgb" else ""),
                  size=12, where="bottom")


def _caption(result: "Attribution", index: int) -> str:
    target = result.recipe.params.get("target")
    if result.classes is not None:
        name = result.spec.class_name(int(result.classes[index])) if result.spec else str(int(result.classes[index]))
        target = name.split(",")[0]
    return f"{result.method}: {target}"


def _scales(results: Sequence["Attribution"], views: Sequence[str], normalization: Normalization,
            percentile: float) -> list[list[float | None]]:
    """scales[m][b]: the divisor of method m's picture of input b (None: the picture's own percentile)."""
    def values(result: "Attribution", view: str, b: int) -> torch.Tensor:
        return pixel_gradient(result, b) if view == "rgb" else result.map[b]

    batch = len(results[0])
    if normalization == "each":
        return [[None] * batch for _ in results]
    if normalization == "method":
        return [[map_scale([values(r, v, b) for b in range(batch)], percentile)] * batch
                for r, v in zip(results, views)]
    shared = map_scale([values(r, v, b) for r, v in zip(results, views) for b in range(batch)], percentile)
    return [[shared] * batch for _ in results]


def attribution_panel(results: Sequence["Attribution"], *, captions: Sequence[Sequence[str]] | None = None,
                      image_labels: Sequence[str] | None = None, normalization: Normalization = "each",
                      percentile: float = 99.0, cell: int | None = None, title: str | None = None,
                      alpha: float = 0.8, columns: int | None = None,
                      views: Mapping[str, View] | None = None) -> Image.Image:
    """Methods side by side: one row per input, the image first, then each result's picture.

    Args:
        results: one `Attribution` per method, all for the same inputs (B each).
        captions: `captions[m][b]` written under method m's map of input b (e.g. deletion/insertion scores).
        image_labels: written under each input image (e.g. the predicted class).
        normalization: "each" (every picture on its own scale; default), "method" (one scale per method across the
            inputs) or "all" (one scale for everything).
        percentile, alpha: see `overlay`; cell: tile size in pixels (default: the input size, at least 160).
        columns: wrap each input's row after this many tiles (the image counts as one); None: no wrapping.
        views: method name -> "heatmap" or "rgb" (the signed gradient around grey); methods not named get a heatmap.
            None means `DEFAULT_VIEWS` (guided backprop in RGB, as Springenberg et al. show it).
    Titles, labels and captions wrap to their tile's width (the heading to the panel's width).
    """
    if not results:
        raise ValueError("attribution_panel needs at least one result")
    if normalization not in ("each", "method", "all"):
        raise ValueError(f"normalization must be 'each', 'method' or 'all', got {normalization!r}")
    batch = len(results[0])
    if any(len(r) != batch for r in results):
        raise ValueError("all results of a panel must explain the same inputs")
    chosen = [(DEFAULT_VIEWS if views is None else views).get(r.method, "heatmap") for r in results]
    for view in chosen:
        _check_view(view)
    cell = cell or max(160, max(results[0].map.shape[1:]))
    scales = _scales(results, chosen, normalization, percentile)
    rows = []
    for b in range(batch):
        pixels = _pixels(results[0], b)
        image = _resize(Image.fromarray((_background(pixels) * 255).round().astype(np.uint8), "RGB"), cell)
        tiles = [_tile("input", image, None, image_labels[b] if image_labels else "", cell)]
        for m, result in enumerate(results):
            if chosen[m] == "rgb":
                rgb, info = signed_rgb(pixel_gradient(result, b), scale=scales[m][b], percentile=percentile)
                picture, name = Image.fromarray(rgb, "RGB"), f"{result.method} (signed, grey = 0)"
            else:
                picture, info = overlay(pixels, result.map[b], scale=scales[m][b], percentile=percentile,
                                        alpha=alpha)
                name = result.method
            caption = captions[m][b] if captions else ""
            tiles.append(_tile(name, _resize(picture, cell), info, caption, cell))
        width = columns or len(tiles)
        rows += [_hstack(tiles[i:i + width], pad=6) for i in range(0, len(tiles), width)]
    out = _vstack(rows, pad=8)
    note = {"method": "one scale per method across the images", "each": "each map scaled on its own",
            "all": "one scale for all maps"}[normalization]
    heading = (title + "   " if title else "") + f"(normalization: {note}; clipped at the {percentile:g}th " \
        "percentile of |map|)"
    return titled(out, heading, size=13, where="top")


def _tile(name: str, picture: Image.Image, info: dict[str, Any] | None, caption: str, cell: int) -> Image.Image:
    """A titled picture with its horizontal colour bar and caption; every text wraps to the tile's width."""
    names = wrap(name, 13, cell - 4)
    captions = [line for line in wrap(caption, 12, cell - 4)] if caption else []
    bar = colorbar(info, length=cell, thickness=8, vertical=False) if info else None
    top = line_height(13) * len(names) + 1
    height = top + cell + (bar.height if bar else 0) + line_height(12) * max(2, len(captions)) + 4
    out = Image.new("RGB", (cell, height), "white")
    draw = ImageDraw.Draw(out)
    draw_lines(draw, (2, 1), names, 13)
    out.paste(picture, (0, top))
    y = top + picture.height + 2
    if bar:
        out.paste(bar, (0, y))
        y += bar.height
    draw_lines(draw, (2, y), captions, 12)
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
