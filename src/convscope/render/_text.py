"""Text that fits: lines wrapped to a width in pixels (`core.wrap_text`), so a title is never cut off at a
picture's edge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw

from .core import _font, text_width
from .core import wrap_text as wrap

__all__ = ["draw_lines", "line_height", "text_width", "titled", "wrap"]


def line_height(size: int) -> int:
    return size + 4


def draw_lines(draw: ImageDraw.ImageDraw, xy: tuple[int, int], lines: Sequence[str], size: int,
               fill: str = "black") -> None:
    for k, line in enumerate(lines):
        draw.text((xy[0], xy[1] + k * line_height(size)), line, fill=fill, font=_font(size))


def titled(image: Image.Image, text: str, *, size: int = 13, where: Literal["top", "bottom"] = "top",
           margin: int = 3) -> Image.Image:
    """`image` with `text` in a white band above (or below) it, wrapped to the image's width."""
    lines = wrap(text, size, image.width - 2 * margin)
    band = line_height(size) * len(lines) + 4
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image.convert("RGB"), (0, band if where == "top" else 0))
    draw_lines(ImageDraw.Draw(out), (margin, 2 if where == "top" else image.height + 2), lines, size)
    return out
