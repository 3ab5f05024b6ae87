"""`Schedule`: how a render's optimization runs (steps, update rule, transforms, regularizers, octaves, tiles, chunks,
seed), kept apart from what it optimizes (the objective) and what it optimizes over (the parameterization).

    render(spec, objective)                                     # the defaults
    render(spec, objective, octaves=3, seed=0)                  # fields as keywords
    plan = Schedule(steps=128, octaves=3); render(spec, a, schedule=plan); render(spec, b, schedule=plan, seed=1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from ..errors import ConvscopeError

__all__ = ["Schedule", "octave_sizes", "parse_bytes"]


@dataclass(frozen=True)
class Schedule:
    """The optimization of a render (every field is also a keyword of `render`).

    Attributes:
        steps: steps per octave.
        optimizer: `"adam"`, `"ascent"` (max-abs normalized gradient), `"laplacian"` (DeepDream, `levels` bands) or
            `"smooth"`; the last two need `param="pixel"`. `lr`: step size (None: the rule's default).
        optimizer_options: more options of the update rule, e.g. `{"widths": (0.5, 1, 2), "rounds": 2}` for
            "smooth" (blur widths in pixels, recursive rounds).
        levels: Laplacian pyramid levels of the "laplacian" optimizer.
        transforms: random jitter/scale/rotate per step (`"standard"` = Lucid's chain; None for none; `"auto"`
            (default): standard from 64 pixels up, none below, where a few pixels of jitter are a large move), or a
            `Transforms` / list of `Transform`.
        regularizers: penalties (`L1`, `L2`, `TotalVariation`, `EdgePenalty`, `ColorPenalty`, `sharpness(s)`) and
            projections (`ClipRange`, `Decay`, `Blur`, `ClipNorm`, `ClipContribution`; pixel param only).
        size: (H, W) or an int; None: the model's input size, or the size of an `init` image.
        octaves, outscale: optimize at `octaves` growing sizes, ending at `size * outscale` (see `octave_sizes`).
        tile: optimize images larger than `tile` pixels tile by tile (the objective becomes the sum over tiles).
        batch: images per optimization: a batched objective's units are rendered in chunks of `batch` (default: all
            at once, or as many as `memory_budget` allows); a plain objective gives `batch` images.
        memory_budget: bytes (or "2GB") the optimization may use for activations; sets the chunk size from a
            probe pass.
        seed: every random draw comes from generators seeded by (seed, item).
        fuse: let the engine (`convscope.accel`) run the frozen working copy faster with the same function:
            eval-mode BatchNorm folded, unread Inception branches skipped, the image-facing convolution's input
            gradient computed phase by phase. False (or `accel.plain()`) runs the network as written.
    """

    steps: int = 256
    optimizer: Literal["adam", "ascent", "laplacian", "smooth"] = "adam"
    lr: float | None = None
    optimizer_options: Mapping[str, Any] | None = None
    levels: int = 4
    transforms: Any = "auto"
    regularizers: Sequence[Any] = ()
    size: int | tuple[int, int] | None = None
    octaves: int = 1
    outscale: float = 1.0
    tile: int | None = None
    batch: int | None = None
    memory_budget: int | str | None = None
    seed: int = 0
    fuse: bool = True

    def with_options(self, **options: Any) -> Schedule:
        """This schedule with some fields replaced; an unknown name raises `TypeError` listing the fields."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"render() got an unexpected keyword {unknown[0]!r}; the schedule's options are "
                            f"{', '.join(sorted(names))}")
        plan = replace(self, **options) if options else self
        if plan.steps < 0:
            raise ConvscopeError(f"steps must be >= 0, got {plan.steps}")
        return plan


def octave_sizes(size: tuple[int, int], octaves: int, outscale: float, octave_scale: float = 1.4) -> list[tuple[int, int]]:
    """Sizes of the octaves: from `size` to `size * outscale` geometrically when `outscale > 1`; otherwise ending
    at `size`, each octave `octave_scale` times the previous one (DeepDream)."""
    if octaves < 1:
        raise ConvscopeError(f"octaves must be >= 1, got {octaves}")
    final = (max(1, round(size[0] * outscale)), max(1, round(size[1] * outscale)))
    if octaves == 1:
        return [size] if outscale == 1 else [size, final]
    if outscale > 1:
        factors = [outscale ** (k / (octaves - 1)) for k in range(octaves)]
        return [(max(1, round(size[0] * f)), max(1, round(size[1] * f))) for f in factors]
    factors = [octave_scale ** -(octaves - 1 - k) for k in range(octaves)]
    return [(max(1, round(final[0] * f)), max(1, round(final[1] * f))) for f in factors]


def parse_bytes(budget: int | float | str | None) -> int | None:
    """`2_000_000_000`, `"512MB"`, `"2GB"`, `"1.5GiB"` -> bytes."""
    if budget is None or isinstance(budget, (int, float)):
        return None if budget is None else int(budget)
    text = budget.strip().upper().replace("IB", "B")
    units = {"KB": 2**10, "MB": 2**20, "GB": 2**30, "TB": 2**40, "B": 1}
    for unit, factor in units.items():
        if text.endswith(unit):
            try:
                return int(float(text[: -len(unit)]) * factor)
            except ValueError:
                break
    raise ConvscopeError(f"memory budget {budget!r}: write bytes or a size like '512MB' or '2GB'")
