"""Pictures of a dataset laid out in 2-D: a scatter of thumbnails, a full grid of thumbnails (one per cell), class
colours with a legend, and code matrices. Pure numpy/PIL: arrays in, PIL images out.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .core import _font, colorize
from .grids import _header, _text_width

__all__ = ["class_colors", "legend", "thumbnail_scatter", "thumbnail_grid", "code_matrices"]

# Well-separated first colours (Kelly's / Tableau-like); past them, golden-ratio hues at alternating lightness.
_BASE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
         "#17becf", "#393b79", "#e7ba52", "#637939", "#ad494a", "#a55194", "#3182bd", "#31a354", "#756bb1"]


def class_colors(count: int) -> np.ndarray:
    """`count` distinct RGB colours (count, 3) uint8, the same for the same count."""
    out = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for c in _BASE[:count]]
    for k in range(len(out), count):
        hue = (k * 0.618033988749895) % 1.0
        light = (0.42, 0.6, 0.32)[k % 3]
        out.append(tuple(round(255 * v) for v in colorsys.hls_to_rgb(hue, light, 0.75)))
    return np.asarray(out, dtype=np.uint8).reshape(count, 3)


def legend(names: Sequence[str], colors: np.ndarray, *, width: int, size: int = 11) -> Image.Image:
    """Colour swatches with class names, in as many columns as fit in `width` pixels."""
    font = _font(size)
    item = max(_text_width(n, size) for n in names) + size + 14
    columns = max(1, min(len(names), width // item))
    rows = math.ceil(len(names) / columns)
    out = Image.new("RGB", (max(width, item), rows * (size + 6) + 6), "white")
    draw = ImageDraw.Draw(out)
    for i, name in enumerate(names):
        r, c = divmod(i, columns)
        x, y = 6 + c * item, 4 + r * (size + 6)
        draw.rectangle([x, y + 1, x + size - 1, y + size], fill=tuple(int(v) for v in colors[i]))
        draw.text((x + size + 4, y), name, fill="black", font=font)
    return out


def _tile(thumb: np.ndarray, side: int, border: int, color: Sequence[int] | None) -> Image.Image:
    """A thumbnail (h, w, C) uint8 fitted into a `side` x `side` square, framed in `color` when given."""
    image = Image.fromarray(thumb[..., 0] if thumb.shape[2] == 1 else thumb[..., :3]).convert("RGB")
    inner = side - 2 * border if color is not None else side
    if (image.width, image.height) != (inner, inner):
        smaller = image.width < inner
        image = image.resize((inner, inner), Image.NEAREST if smaller else Image.BILINEAR)
    if color is None:
        return image
    tile = Image.new("RGB", (side, side), tuple(int(v) for v in color))
    tile.paste(image, (border, border))
    return tile


def _finish(body: Image.Image, title: Sequence[str], names: Sequence[str] | None,
            colors: np.ndarray | None) -> Image.Image:
    if names is not None and colors is not None:
        key = legend(names, colors, width=body.width)
        both = Image.new("RGB", (max(body.width, key.width), body.height + key.height), "white")
        both.paste(body, (0, 0))
        both.paste(key, (0, body.height))
        body = both
    return _header(body, title)


def thumbnail_grid(cells: np.ndarray, shape: tuple[int, int], thumbs: np.ndarray, *, cell: int = 32,
                   labels: np.ndarray | None = None, names: Sequence[str] | None = None,
                   title: Sequence[str] = ()) -> Image.Image:
    """Thumbnails placed one per cell of a rows x cols grid.

    Args:
        cells: (N,) cell index of each item (row-major: cell = row * cols + col); cells are distinct.
        shape: (rows, cols).
        thumbs: (N, h, w, C) uint8 thumbnails, C = 1 or 3.
        cell: pixels per cell.
        labels: (N,) class of each item; with `names`, each thumbnail is framed in its class colour and a legend
            is drawn below.
        title: lines above the picture.
    """
    rows, cols = shape
    colors = class_colors(len(names)) if labels is not None and names is not None else None
    border = max(1, cell // 16) if colors is not None else 0
    out = Image.new("RGB", (cols * cell, rows * cell), (235, 235, 235))
    for i, target in enumerate(np.asarray(cells)):
        r, c = divmod(int(target), cols)
        color = colors[int(labels[i])] if colors is not None else None
        out.paste(_tile(thumbs[i], cell, border, color), (c * cell, r * cell))
    return _finish(out, title, names if colors is not None else None, colors)


def thumbnail_scatter(coords: np.ndarray, thumbs: np.ndarray, *, size: int = 1600, thumb: int = 40,
                      labels: np.ndarray | None = None, names: Sequence[str] | None = None,
                      title: Sequence[str] = ()) -> Image.Image:
    """Thumbnails drawn at 2-D positions (Karpathy's t-SNE pictures).

    Args:
        coords: (N, 2) positions (x, y) in any units; scaled so that the points fill a `size` x `size` canvas.
        thumbs: (N, h, w, C) uint8 thumbnails, each drawn `thumb` pixels wide, centred on its point (later items on
            top of earlier ones).
        labels, names: as for `thumbnail_grid` (coloured frames and a legend).
    """
    xy = np.asarray(coords, dtype=np.float64)
    low, high = xy.min(0), xy.max(0)
    span = np.where(high > low, high - low, 1.0)
    free = size - thumb
    pos = ((xy - low) / span * free).round().astype(int)
    colors = class_colors(len(names)) if labels is not None and names is not None else None
    border = max(1, thumb // 16) if colors is not None else 0
    out = Image.new("RGB", (size, size), "white")
    for i, (x, y) in enumerate(pos):
        color = colors[int(labels[i])] if colors is not None else None
        out.paste(_tile(thumbs[i], thumb, border, color), (int(x), int(free - y)))  # y up, as in a plot
    return _finish(out, title, names if colors is not None else None, colors)


def code_matrices(panels: Mapping[str, np.ndarray], *, height: int = 256, title: str = "") -> Image.Image:
    """One heat map per layer: rows = items, columns = code dimensions, each column scaled to its own min..max."""
    tiles = []
    for name, matrix in panels.items():
        m = np.asarray(matrix, dtype=np.float32)
        low, high = m.min(0, keepdims=True), m.max(0, keepdims=True)
        scaled = np.where(high > low, (m - low) / np.where(high > low, high - low, 1), 0.0)
        image = Image.fromarray(colorize(scaled, "viridis"), "RGB")
        image = image.resize((max(64, min(512, image.width * 2)), height), Image.NEAREST)
        tiles.append(_header(image, [f"{name}: {m.shape[1]} dims"], size=11))
    width = sum(t.width for t in tiles) + 8 * (len(tiles) + 1)
    out = Image.new("RGB", (width, max(t.height for t in tiles) + 8), "white")
    x = 8
    for t in tiles:
        out.paste(t, (x, 4))
        x += t.width + 8
    return _header(out, [title])
