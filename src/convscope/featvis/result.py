"""`Visualization`: what `render` returns - images, the objective before/after and along the way, and the recipe."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..render.core import grid, stretch_gain, to_pil
from ..results import Recipe, ResultMixin

__all__ = ["Visualization"]


@dataclass(frozen=True)
class Visualization(ResultMixin):
    """The result of `render`.

    Attributes:
        images: (B, C, H, W) pixels in [0, 1] (grey for dead items).
        values: (B,) objective values of the final images (no transforms).
        start_values: (B,) objective values of the starting images.
        trace: (steps, B) objective values at every step (on the transformed images the optimizer saw).
        dead: batch items whose objective stayed exactly 0 at every step (a unit that never activated); their
            images are grey rather than noise dressed up as a feature.
        labels: a short label per item (the unit it shows).
        recipe: how to make it again (model, objective, parameterization, regularizers, steps, seed, versions).
    """

    images: torch.Tensor
    values: torch.Tensor
    start_values: torch.Tensor
    trace: torch.Tensor
    dead: list[int]
    labels: list[str]
    recipe: Recipe

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def display(self) -> str:
        """How the pixels are shown: "none" (as they are) or "stretch" (contrast stretched around the mean, as
        recorded in the recipe by `class_model` with the paper's settings)."""
        return self.recipe.params.get("display", "none")

    def image(self, i: int = 0) -> Image.Image:
        """Item `i` as a PIL image (no label)."""
        return to_pil(self.images[i], norm=self.display)

    def to_image(self, *, columns: int | None = None, cell: int | None = None, labels: bool = True) -> Image.Image:
        """A grid of all items, each labelled with its unit and final objective value ("dead" for dead units).

        `cell` upscales each tile to that many pixels (nearest); small images (< 96 px) default to 96.
        """
        tiles = [to_pil(img, norm=self.display) for img in self.images]
        if cell is None and max(self.images.shape[-2:]) < 96:
            cell = 96
        if len(tiles) == 1 and not labels:
            return tiles[0] if cell is None else grid(tiles, columns=1, cell=cell, pad=0)
        names = None
        if labels:
            names = [f"{lab} dead" if i in self.dead else f"{lab} {float(v):.3g}"
                     for i, (lab, v) in enumerate(zip(self.labels, self.values))]
            if self.display == "stretch":
                names = [f"{name}, contrast x{stretch_gain(img):.2g} around the mean"
                         for name, img in zip(names, self.images)]
        return grid(tiles, columns=columns, labels=names, cell=cell, wrap_labels=True)
