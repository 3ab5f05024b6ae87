"""Labelled panels of many small pictures: feature-map grids, filter grids and filter matrices, vector strips.

Pure numpy/PIL: arrays in, PIL images out. Normalization is always an explicit argument and is written on the
picture, so two panels are never compared on silently different scales.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw

from .core import Colormap, _font, _np, colorize, normalize

__all__ = ["feature_grid", "vector_strip", "filter_tiles", "filter_matrix", "upscale_factor", "colorbar"]

MapNorm = Literal["channel", "shared"]
FilterNorm = Literal["filter", "shared"]
_DEAD = "#c0392b"


def upscale_factor(height: int, width: int, *, target: int = 56, limit: int = 128) -> float:
    """Scale for a tile of (height, width): an integer upscale to at least `target` pixels for small maps
    (nearest, to keep pixels crisp), a downscale to `limit` pixels for big ones."""
    side = max(height, width)
    if side > limit:
        return limit / side
    return float(max(1, math.ceil(target / side)))


def _resize(image: Image.Image, scale: float) -> Image.Image:
    if scale == 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST if scale > 1 else Image.BOX)


def _text_width(text: str, size: int) -> int:
    font = _font(size)
    left, _, right, _ = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font)
    return right - left


def _header(body: Image.Image, lines: Sequence[str], *, size: int = 13) -> Image.Image:
    """Put title lines above a panel (the panel widens if a line is longer than it)."""
    lines = [line for line in lines if line]
    if not lines:
        return body
    band = (size + 5) * len(lines) + 6
    width = max(body.width, max(_text_width(line, size) for line in lines) + 12)
    out = Image.new("RGB", (width, body.height + band), "white")
    out.paste(body, (0, band))
    draw = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        draw.text((6, 4 + i * (size + 5)), line, fill="black", font=_font(size))
    return out


def colorbar(low: float, high: float, *, cmap: Colormap, width: int = 200, height: int = 12) -> Image.Image:
    """A horizontal colour scale from `low` to `high` with its end values written below."""
    ramp = colorize(np.tile(np.linspace(0, 1, width, dtype=np.float32), (height, 1)), cmap)
    out = Image.new("RGB", (width + 100, height + 16), "white")
    out.paste(Image.fromarray(ramp, "RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    font = _font(10)
    draw.text((0, height + 2), f"{low:.3g}", fill="black", font=font)
    text = f"{high:.3g}"
    draw.text((width - _text_width(text, 10), height + 2), text, fill="black", font=font)
    return out


def _tile_grid(tiles: Sequence[Image.Image], labels: Sequence[str], colors: Sequence[str], columns: int,
               pad: int = 4) -> Image.Image:
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    band = 14
    w = max(w, max(_text_width(text, 10) for text in labels) + 2)
    rows = math.ceil(len(tiles) / columns)
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + band + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    font = _font(10)
    for i, (tile, text, color) in enumerate(zip(tiles, labels, colors)):
        r, c = divmod(i, columns)
        x, y = pad + c * (w + pad), pad + r * (h + band + pad)
        out.paste(tile.convert("RGB"), (x, y))
        draw.text((x, y + tile.height + 1), text, fill=color, font=font)
    return out


def feature_grid(
    maps: torch.Tensor | np.ndarray,
    *,
    indices: Sequence[int] | None = None,
    dead: Sequence[int] = (),
    norm: MapNorm = "channel",
    cmap: Colormap = "viridis",
    columns: int | None = None,
    title: Sequence[str] = (),
) -> Image.Image:
    """Feature maps (N, H, W) as a labelled grid.

    Args:
        maps: the maps to draw, one tile each.
        indices: the channel number written under each tile (default 0..N-1).
        dead: channel numbers to mark as dead (label in red).
        norm: "channel" scales each map to its own min..max; "shared" uses one min..max for all maps (a colour
            bar shows it). Constant maps are drawn as the colormap's low end.
        cmap: colormap for the values.
        columns: tiles per row (default: about square, at most 16).
        title: lines written above the grid.
    """
    a = _np(maps)
    if a.ndim != 3 or a.shape[0] == 0:
        raise ValueError(f"feature_grid needs maps (N, H, W) with N >= 1, got shape {a.shape}")
    n, height, width = a.shape
    indices = list(range(n)) if indices is None else list(indices)
    dead_set = set(dead)
    scale = upscale_factor(height, width)
    low, high = float(a.min()), float(a.max())
    tiles = []
    for m in a:
        if norm == "shared":
            values = np.clip((m - low) / (high - low), 0, 1) if high > low else np.zeros_like(m)
        else:
            values = normalize(m, "minmax")
        tiles.append(_resize(Image.fromarray(colorize(values, cmap), "RGB"), scale))
    labels = [f"{i} dead" if i in dead_set else str(i) for i in indices]
    colors = [_DEAD if i in dead_set else "black" for i in indices]
    columns = columns or min(16, math.ceil(math.sqrt(n)))
    body = _tile_grid(tiles, labels, colors, columns)
    if norm == "shared":
        bar = colorbar(low, high, cmap=cmap)
        stacked = Image.new("RGB", (max(body.width, bar.width), body.height + bar.height + 4), "white")
        stacked.paste(body, (0, 0))
        stacked.paste(bar, (4, body.height + 2))
        body = stacked
    return _header(body, title)


def vector_strip(
    values: torch.Tensor | np.ndarray,
    *,
    cmap: Colormap | None = None,
    title: Sequence[str] = (),
    bars_up_to: int = 256,
) -> Image.Image:
    """A vector (F,) as a bar chart (F <= `bars_up_to`) or, when longer, as a heat strip wrapped in rows of 64
    cells with the first index of each row on the left. Bars grow from zero (signed values go below the axis);
    the strip uses `cmap` (default "coolwarm" centred on 0 for signed values, "viridis" otherwise)."""
    v = _np(values).reshape(-1)
    if v.size == 0:
        raise ValueError("vector_strip needs at least one value")
    signed = bool(v.min() < 0)
    top = float(np.abs(v).max()) or 1.0
    if v.size <= bars_up_to:
        bar = max(2, min(12, 768 // v.size))
        plot_h = 160
        width = v.size * bar + 60
        out = Image.new("RGB", (width, plot_h + 30), "white")
        draw = ImageDraw.Draw(out)
        zero = plot_h // 2 + 5 if signed else plot_h + 5
        span = plot_h // 2 if signed else plot_h
        for i, value in enumerate(v):
            x = 50 + i * bar
            y = zero - round(value / top * span)
            draw.rectangle([x, min(y, zero), x + max(1, bar - 2), max(y, zero)],
                           fill="#3b4cc0" if value < 0 else "#b40426")
        draw.line([48, zero, width - 6, zero], fill="gray")
        font = _font(10)
        draw.text((2, 2), f"{top:.3g}", fill="black", font=font)
        if signed:
            draw.text((2, plot_h - 6), f"{-top:.3g}", fill="black", font=font)
        for i in range(0, v.size, max(1, v.size // 8)):
            draw.text((50 + i * bar, plot_h + 14), str(i), fill="black", font=font)
        return _header(out, title)
    cmap = cmap or ("coolwarm" if signed else "viridis")
    per_row, cell = 64, 10
    rows = math.ceil(v.size / per_row)
    padded = np.full(rows * per_row, np.nan, dtype=np.float32)
    padded[: v.size] = v
    scaled = normalize(np.nan_to_num(padded), "absmax" if signed else "minmax")
    rgb = colorize(scaled.reshape(rows, per_row), cmap)
    rgb[np.isnan(padded.reshape(rows, per_row))] = 255
    strip = Image.fromarray(rgb, "RGB").resize((per_row * cell, rows * cell), Image.NEAREST)
    out = Image.new("RGB", (strip.width + 50, strip.height + 4), "white")
    out.paste(strip, (48, 2))
    draw = ImageDraw.Draw(out)
    for r in range(rows):
        if rows <= 40 or r % max(1, rows // 40) == 0:
            draw.text((2, 2 + r * cell - 1), str(r * per_row), fill="black", font=_font(9))
    low = float(v.min()) if not signed else -top
    bar = colorbar(low, float(v.max()) if not signed else top, cmap=cmap)
    stacked = Image.new("RGB", (max(out.width, bar.width), out.height + bar.height + 4), "white")
    stacked.paste(out, (0, 0))
    stacked.paste(bar, (48, out.height + 2))
    return _header(stacked, title)


def _signed(w: np.ndarray, top: float) -> np.ndarray:
    """Symmetric scaling: 0 -> 0.5 (mid grey), +-top -> 1/0."""
    return np.clip(w / top, -1, 1) * 0.5 + 0.5 if top > 0 else np.full_like(w, 0.5)


def filter_tiles(
    weights: torch.Tensor | np.ndarray,
    *,
    labels: Sequence[str],
    norm: FilterNorm = "filter",
    columns: int | None = None,
    title: Sequence[str] = (),
) -> Image.Image:
    """Input-space filters (N, C, kh, kw) with C = 3 (one RGB tile each) or C = 1 (grayscale), labelled.

    Values are scaled symmetrically so that 0 is mid grey: by each filter's own max |w| (`norm="filter"`) or by
    the layer's (`"shared"`). Tiles are upscaled with nearest neighbours so 3x3 kernels stay readable.
    """
    w = _np(weights)
    if w.ndim != 4 or w.shape[1] not in (1, 3):
        raise ValueError(f"filter_tiles needs weights (N, 1 or 3, kh, kw), got shape {w.shape}")
    shared = float(np.abs(w).max())
    scale = upscale_factor(w.shape[2], w.shape[3], target=48)
    tiles = []
    for f in w:
        values = _signed(f, shared if norm == "shared" else float(np.abs(f).max()))
        pixels = (values.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        image = Image.fromarray(pixels[..., 0], "L") if pixels.shape[2] == 1 else Image.fromarray(pixels, "RGB")
        tiles.append(_resize(image, scale))
    columns = columns or min(16, math.ceil(math.sqrt(len(tiles))))
    body = _tile_grid(tiles, labels, ["black"] * len(tiles), columns)
    return _header(body, title)


def filter_matrix(
    weights: torch.Tensor | np.ndarray,
    *,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
    norm: FilterNorm = "filter",
    cmap: Colormap = "coolwarm",
    title: Sequence[str] = (),
) -> Image.Image:
    """Deeper-layer filters (N, C, kh, kw) as a matrix: one row per output filter, one column per input channel,
    each kernel a small signed tile (`cmap` centred on 0, scaled by the row's max |w| or the layer's)."""
    w = _np(weights)
    if w.ndim != 4:
        raise ValueError(f"filter_matrix needs weights (N, C, kh, kw), got shape {w.shape}")
    n, c, kh, kw = w.shape
    scale = upscale_factor(kh, kw, target=24, limit=64)
    tile_h, tile_w = max(1, round(kh * scale)), max(1, round(kw * scale))
    pad = 2
    left = max(_text_width(t, 10) for t in row_labels) + 8
    head = 14
    out = Image.new("RGB", (left + c * (tile_w + pad) + pad, head + n * (tile_h + pad) + pad), "white")
    draw = ImageDraw.Draw(out)
    font = _font(10)
    shared = float(np.abs(w).max())
    for j, text in enumerate(column_labels):
        if c <= 24 or j % max(1, c // 24) == 0:
            draw.text((left + j * (tile_w + pad), 1), text, fill="black", font=font)
    for i in range(n):
        y = head + i * (tile_h + pad)
        draw.text((2, y + max(0, (tile_h - 10) // 2)), row_labels[i], fill="black", font=font)
        top = shared if norm == "shared" else float(np.abs(w[i]).max())
        for j in range(c):
            rgb = colorize(_signed(w[i, j], top), cmap)
            tile = Image.fromarray(rgb, "RGB").resize((tile_w, tile_h), Image.NEAREST)
            out.paste(tile, (left + j * (tile_w + pad), y))
    bar = colorbar(-1.0, 1.0, cmap=cmap, width=120)
    stacked = Image.new("RGB", (max(out.width, bar.width + 10), out.height + bar.height + 4), "white")
    stacked.paste(out, (0, 0))
    stacked.paste(bar, (left, out.height + 2))
    return _header(stacked, [*title, "colour: weight / max|w| of the " + ("row" if norm == "filter" else "layer")])
