"""Text that fits: lines wrapped to a width in pixels, so a title is never cut off at a picture's edge."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from PIL import Image, ImageDraw

from .core import _font

__all__ = ["draw_lines", "line_height", "text_width", "titled", "wrap"]


def text_width(text: str, size: int) -> float:
    """Width in pixels of `text` in the default font at `size`."""
    return _font(size).getlength(text)


def line_height(size: int) -> int:
    return size + 4


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


def wrap(text: str, size: int, width: float) -> list[str]:
    """`text` as lines no wider than `width` pixels: explicit newlines kept, words moved to the next line, words
    longer than a line broken where they must be."""
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
            pieces = _split_word(word, size, width) if text_width(word, size) > width else [word]
            lines.extend(pieces[:-1])
            current = pieces[-1]
        lines.append(current)
    return lines


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
