"""Pictures of the trust checks: the model-randomization cascade as map tiles and as a curve.

Pure numpy/PIL: a `RandomizationCheck`'s tensors in, a PIL image out.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw

from ._text import titled
from .core import _font
from .overlay import _hstack, _resize, _tile, _vstack, heatmap

__all__ = ["cascade_plot", "randomization_strip"]

_BAD, _GOOD, _SIGNED = (180, 20, 40), (40, 120, 60), (120, 120, 200)


def cascade_plot(check: Any, *, width: int = 420, height: int = 220) -> Image.Image:
    """The cascade curve: the similarity (mean |Spearman rho| over inputs, bold; red where above the threshold) and
    the signed mean rho (thin) after randomizing from the top layer down to each checkpoint, with the threshold
    dashed. x: the checkpoints, top layer first; y: -1 .. 1."""
    curve = [float(v) for v in check.curve]
    signed = [float(v) for v in check.correlations.mean(1)]
    labels = ["intact"] + [f"{d}" for d in check.depth]
    left, right, top, bottom = 40, 12, 22, 40
    out = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(out)
    font = _font(11)
    n = len(curve) + 1  # the intact model first, at similarity 1

    def point(k: int, value: float) -> tuple[float, float]:
        x = left + (k / max(n - 1, 1)) * (width - left - right)
        return x, top + (1 - (value + 1) / 2) * (height - top - bottom)

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.line([point(0, 0.0), point(n - 1, 0.0)], fill=(200, 200, 200))
    for sign in (1, -1):  # the threshold on |rho|, both signs
        y = point(0, sign * check.threshold)[1]
        for x in range(left, width - right, 8):
            draw.line([(x, y), (min(x + 4, width - right), y)], fill=(150, 150, 150))
    draw.line([point(k, v) for k, v in enumerate([1.0] + signed)], fill=_SIGNED, width=1)
    points = [point(k, v) for k, v in enumerate([1.0] + curve)]
    draw.line(points, fill=(60, 60, 60), width=2)
    for k, (x, y) in enumerate(points[1:], 1):
        colour = _BAD if curve[k - 1] > check.threshold else _GOOD
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    for k, text in enumerate(labels):
        x, _ = point(k, -1)
        draw.text((x - font.getlength(text) / 2, height - bottom + 3), text, fill="black", font=font)
    for value in (1, 0, -1):
        draw.text((4, point(0, value)[1] - 6), f"{value:+d}" if value else "0", fill="black", font=font)
    draw.text((left, height - bottom + 17), "layers randomized from the top (count)", fill="black", font=font)
    draw.text((left, 4), "mean |rho| (bold), mean rho (thin), threshold (dashed)", fill="black", font=font)
    return out


def randomization_strip(check: Any, index: int = 0, *, cell: int = 128, percentile: float = 99.0,
                        curve: bool = True) -> Image.Image:
    """The original map of input `index`, then its map after each randomization checkpoint with its rho, the
    cascade curve under them (`curve=True`), and the verdict on top."""
    maps = [check.original[index]] + [m[index] for m in check.maps]
    names = ["original"] + [f"to {layer} ({d})" for d, layer in zip(check.depth, check.layers)]
    notes = [""] + [f"rho = {float(c[index]):.2f}" for c in check.correlations]
    tiles = []
    for picture, name, note in zip(maps, names, notes):
        rgb, _, info = heatmap(picture, percentile=percentile)
        tiles.append(_tile(name, _resize(Image.fromarray(rgb, "RGB"), cell), info, note, cell))
    body = _hstack(tiles, pad=6)
    if curve:
        body = _vstack([body, cascade_plot(check, width=max(320, min(body.width, 640)))], pad=4)
    if check.flagged:
        deepest = check.survives_to
        verdict = (f"FLAGGED: the map survives randomization (mean |rho| {check.worst:.2f} > {check.threshold:g}"
                   + (f", down to {deepest})" if deepest else ")"))
    else:
        verdict = f"passed: mean |rho| <= {check.threshold:g} at every step of the cascade"
    return titled(body, f"{check.method} randomization check: {verdict}", size=13, where="top")
