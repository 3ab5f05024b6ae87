"""Normalization, colormaps and grids: the building blocks every picture of convscope uses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

__all__ = ["normalize", "stretch_gain", "colorize", "to_pil", "grid", "label"]

Norm = Literal["minmax", "absmax", "percentile", "stretch", "none"]


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def normalize(x: torch.Tensor | np.ndarray, mode: Norm = "minmax", *, percentile: float = 99.5,
              scale: float | None = None) -> np.ndarray:
    """Map values to [0, 1] (float32 array, same shape).

    - "minmax": (x - min) / (max - min) over the whole array.
    - "absmax": x / max|x| mapped from [-1, 1] to [0, 1] (0 stays at 0.5): for signed maps.
    - "percentile": clip at the `percentile` of |x|, then like "absmax" for signed data or minmax otherwise.
    - "stretch": contrast stretch around the mean, 0.5 + (x - mean) * `stretch_gain(x)`, clipped to [0, 1] (the
      display of Simonyan et al.'s class models, whose evidence is a small deviation from the start image).
    - "none": clip to [0, 1] only.
    `scale` overrides the computed divisor (a shared normalization across a panel).
    """
    a = _np(x)
    if not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if mode == "none":
        return np.clip(a, 0.0, 1.0)
    if mode == "stretch":
        return np.clip(0.5 + (a - a.mean()) * stretch_gain(a, percentile), 0.0, 1.0)
    if mode == "minmax":
        lo, hi = float(a.min()), float(a.max())
        if scale is not None:
            lo, hi = 0.0, scale
        return np.clip((a - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(a)
    signed = a.min() < 0
    if mode == "percentile":
        top = scale if scale is not None else float(np.percentile(np.abs(a), percentile))
        if not signed:
            return np.clip(a / top, 0, 1) if top > 0 else np.zeros_like(a)
    else:
        top = scale if scale is not None else float(np.abs(a).max())
    if top <= 0:
        return np.full_like(a, 0.5)
    return np.clip(a / top, -1, 1) * 0.5 + 0.5


def stretch_gain(x: torch.Tensor | np.ndarray, percentile: float = 99.5) -> float:
    """The contrast gain of the "stretch" normalization: `percentile` of |x - mean| maps to 0 or 1 (one gain for
    all channels, so colours keep their balance); 1 for a constant image."""
    a = _np(x)
    top = float(np.percentile(np.abs(a - a.mean()), percentile))
    return 0.5 / top if top > 0 else 1.0


# A few perceptual colormaps as control points, interpolated linearly (no matplotlib dependency).
_MAPS = {
    "viridis": [(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)],
    "inferno": [(0, 0, 4), (87, 16, 110), (188, 55, 84), (249, 142, 9), (252, 255, 164)],
    "gray": [(0, 0, 0), (255, 255, 255)],
    "coolwarm": [(59, 76, 192), (141, 176, 254), (221, 221, 221), (244, 154, 123), (180, 4, 38)],
    "jet": [(0, 0, 128), (0, 0, 255), (0, 255, 255), (255, 255, 0), (255, 0, 0), (128, 0, 0)],
}
Colormap = Literal["viridis", "inferno", "gray", "coolwarm", "jet"]


def colorize(values01: np.ndarray, cmap: Colormap = "viridis") -> np.ndarray:
    """[0, 1] array (H, W) -> uint8 RGB (H, W, 3) through a colormap."""
    if cmap not in _MAPS:
        raise ValueError(f"unknown colormap {cmap!r}; choose from {sorted(_MAPS)}")
    stops = np.array(_MAPS[cmap], dtype=np.float32)
    pos = np.clip(values01, 0, 1) * (len(stops) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(stops) - 2)
    frac = (pos - lo)[..., None]
    rgb = stops[lo] * (1 - frac) + stops[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def to_pil(image: torch.Tensor | np.ndarray, *, norm: Norm = "none", cmap: Colormap | None = None) -> Image.Image:
    """An image (C, H, W) tensor / (H, W, C) array or a map (H, W) -> PIL.

    Tensors are taken as channels-first; 1-channel images become grayscale unless `cmap` is given. Values are
    normalized with `norm` first ("none": already in [0, 1]).
    """
    a = _np(image)
    if isinstance(image, torch.Tensor) and a.ndim == 3:
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    a = normalize(a, norm)
    if a.ndim == 2:
        if cmap is not None:
            return Image.fromarray(colorize(a, cmap), "RGB")
        return Image.fromarray((a * 255).round().astype(np.uint8), "L")
    if a.shape[2] != 3:  # N-channel inputs: show the first three
        a = a[..., :3] if a.shape[2] > 3 else np.concatenate([a, a[..., -1:].repeat(3 - a.shape[2], 2)], 2)
    return Image.fromarray((a * 255).round().astype(np.uint8), "RGB")


def _font(size: int = 11) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def text_width(text: str, size: int) -> float:
    """Width in pixels of `text` in the default font at `size`."""
    return _font(size).getlength(text)


def _split_word(word: str, size: int, width: float) -> list[str]:
    """A word longer than `width` broken into pieces that fit (at least one character each)."""
    pieces, current = [], ""
    for char in word:
        if current and text_width(current + char, size) > width:
            pieces.append(current)
            current = char
        else:
            current += char
    return pieces + [current]


def wrap_text(text: str, size: int, width: float, *, break_words: bool = True) -> list[str]:
    """`text` as lines no wider than `width` pixels: explicit newlines kept, words moved to the next line, and words
    longer than a line broken where they must be (`break_words`) or left whole on a line of their own."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        current = ""
        for word in paragraph.split(" "):
            candidate = f"{current} {word}" if current else word
            if text_width(candidate, size) <= width:
                current = candidate
                continue
            if current:
                lines.append(current)
            too_long = break_words and text_width(word, size) > width
            pieces = _split_word(word, size, width) if too_long else [word]
            lines.extend(pieces[:-1])
            current = pieces[-1]
        lines.append(current)
    return lines


def label(image: Image.Image, text: str, *, size: int = 11, where: Literal["top", "bottom"] = "bottom",
          fill: str = "black", wrap: bool = False) -> Image.Image:
    """Add text (colour `fill`) in a white band above or below the image; with `wrap`, text wider than the image
    goes onto more lines instead of being cut off."""
    font = _font(size)
    lines = wrap_text(text, size, image.width - 6, break_words=False) if wrap else [text]
    step = size + 3
    band = size + 6 + step * (len(lines) - 1)
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image.convert("RGB"), (0, band if where == "top" else 0))
    draw = ImageDraw.Draw(out)
    y = 2 if where == "top" else image.height + 2
    for k, line in enumerate(lines):
        draw.text((3, y + k * step), line, fill=fill, font=font)
    return out


def grid(images: Sequence[Image.Image], *, columns: int | None = None, labels: Sequence[str] | None = None,
         pad: int = 2, cell: int | None = None, title: str | None = None, background: str = "white",
         wrap_labels: bool = False) -> Image.Image:
    """Tile PIL images into a grid, row-major, optionally upscaled to `cell` pixels (nearest, to keep pixels crisp)
    and labelled under each tile (wrapped to the tile's width with `wrap_labels`); `title` adds a line on top."""
    if not images:
        raise ValueError("grid needs at least one image")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    tiles = []
    for i, img in enumerate(images):
        if cell is not None and (img.width, img.height) != (cell, cell):
            scale = cell / max(img.width, img.height)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)
        if labels is not None:
            img = label(img, labels[i], size=10, wrap=wrap_labels)
        tiles.append(img.convert("RGB"))
    w = max(t.width for t in tiles)
    h = max(t.height for t in tiles)
    rows = int(np.ceil(len(tiles) / columns))
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), background)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        out.paste(tile, (pad + c * (w + pad), pad + r * (h + pad)))
    if title:
        out = label(out, title, size=13, where="top")
    return out
