"""A horizontal bar chart of scores in [0, 1] with a reference line (probe accuracy per layer against chance).
Pure PIL."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image, ImageDraw

from .core import _font
from .grids import _header, _text_width

__all__ = ["score_bars"]


def score_bars(names: Sequence[str], values: Sequence[float], *, reference: float | None = None,
               reference_label: str = "chance", width: int = 360, title: Sequence[str] = ()) -> Image.Image:
    """One bar per name, length = value on a fixed 0..1 axis, the value written after it; `reference` is drawn
    as a dashed line across all bars."""
    size, bar, gap = 11, 14, 6
    left = max(_text_width(n, size) for n in names) + 12
    right = 48
    height = len(names) * (bar + gap) + gap + 18
    out = Image.new("RGB", (left + width + right, height), "white")
    draw = ImageDraw.Draw(out)
    font = _font(size)
    for i, (name, value) in enumerate(zip(names, values)):
        y = gap + i * (bar + gap)
        draw.text((left - 6 - _text_width(name, size), y + 1), name, fill="black", font=font)
        draw.rectangle([left, y, left + width, y + bar], fill=(238, 238, 238))
        length = round(max(0.0, min(1.0, float(value))) * width)
        draw.rectangle([left, y, left + length, y + bar], fill=(49, 130, 189))
        draw.text((left + width + 4, y + 1), f"{float(value):.3f}", fill="black", font=font)
    axis = height - 16
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = left + round(tick * width)
        draw.line([x, axis, x, axis + 3], fill="black")
        draw.text((x - 8, axis + 3), f"{tick:g}", fill="black", font=_font(9))
    if reference is not None:
        x = left + round(max(0.0, min(1.0, reference)) * width)
        for y in range(0, axis, 6):
            draw.line([x, y, x, min(axis, y + 3)], fill=(214, 39, 40), width=2)
        title = [*title, f"dashed red line: {reference_label} {reference:.3f}"]
    return _header(out, title)
