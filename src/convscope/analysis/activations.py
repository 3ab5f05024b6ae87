"""What one layer does with one image: every channel's feature map, and which channels are dead on it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InputShapeError
from ..hooks import capture, frozen
from ..layers import resolve_layer
from ..models import ModelSpec, load
from ..render.core import Colormap
from ..render.grids import MapNorm, feature_grid, vector_strip
from ..results import Recipe, ResultMixin

__all__ = ["ActivationGrid", "activations", "dead_channels", "as_model_input", "ImageLike"]

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor


def as_model_input(spec: ModelSpec, image: ImageLike) -> tuple[torch.Tensor, str]:
    """An image in any accepted form -> (normalized model input (1, C, H, W) on the model's device, description).

    - a path, PIL image or array (H, W[, C]; uint8 0..255 or float 0..1): pixels, resized and centre-cropped to
      the model's input size and normalized with its mean/std (`spec.preprocess`);
    - a tensor (C, H, W): pixels in [0, 1], resized/cropped and normalized the same way;
    - a tensor (1, C, H, W): an already normalized model input, used as is (any H, W the model accepts).
    """
    if isinstance(image, torch.Tensor):
        if image.ndim == 3:
            spec.batch(image, "a (C, H, W) pixel tensor")  # channels and NaN checks
            low, high = float(image.min()), float(image.max())
            if low < -1e-3 or high > 1 + 1e-3:
                raise InputShapeError(
                    f"a (C, H, W) tensor is read as pixels in [0, 1], but its values span [{low:.3g}, {high:.3g}]; "
                    "pass a normalized model input as (1, C, H, W) instead")
            pixels = spec.fit(image[None].float())
            return spec.normalize(pixels).to(spec.device, spec.dtype), f"pixels {tuple(image.shape)}"
        if image.ndim == 4:
            if image.shape[0] != 1:
                raise InputShapeError(f"a normalized input must be (1, {spec.channels}, H, W), got "
                                      f"{tuple(image.shape)}")
            return spec.batch(image, "a normalized input"), f"input {tuple(image.shape)}"
        raise InputShapeError(f"an image tensor must be pixels (C, H, W) or a model input (1, C, H, W), got "
                              f"{tuple(image.shape)}")
    description = str(image) if isinstance(image, (str, Path)) else type(image).__name__
    return spec.preprocess(image), description


def dead_channels(activations: torch.Tensor, *, eps: float = 0.0) -> list[int]:
    """Channels whose every value has |a| <= `eps` (all zero by default).

    `activations` is one image's (C, H, W) or (F,), or a batch (B, C, H, W) / (B, F); for a batch a channel is
    dead only if it is zero on every image. Dead-unit statistics over a dataset live with the dataset tools.
    """
    a = activations.detach()
    if a.ndim in (2, 4):  # a batch: channels are axis 1
        a = a.transpose(0, 1)
    elif a.ndim not in (1, 3):
        raise InputShapeError(f"dead_channels needs (C, H, W), (F,), (B, C, H, W) or (B, F); got {tuple(a.shape)}")
    peak = a.abs().reshape(a.shape[0], -1).amax(dim=1)
    return [int(i) for i in torch.nonzero(peak <= eps).flatten()]


@dataclass(frozen=True, eq=False)
class ActivationGrid(ResultMixin):
    """One layer's output for one image.

    Attributes:
        tensor: (C, H, W) feature maps, or (F,) for a layer without spatial axes (fully connected).
        layer: the layer's name (`path` or `path#k`).
        dead: channels that are exactly zero everywhere on this image.
        recipe: how it was made (model, layer, image).
    """

    tensor: torch.Tensor
    layer: str
    dead: tuple[int, ...]
    recipe: Recipe

    def to_image(self, *, max_channels: int | None = 64, norm: MapNorm = "channel", cmap: Colormap = "viridis",
                 columns: int | None = None) -> Image.Image:
        """The feature maps as a labelled grid (channel number under each tile, dead ones in red), or a bar/strip
        picture for a vector.

        Args:
            max_channels: draw the first this-many channels (`None`: all); the title says how many are shown.
            norm: "channel" scales each map to its own min..max (shows every map's pattern); "shared" uses one
                scale for all maps (shows which channels respond most), with a colour bar.
            cmap: colormap ("viridis", "inferno", "gray", "coolwarm", "jet").
            columns: tiles per row (default about square).
        """
        t = self.tensor
        if t.ndim == 1:
            top = torch.topk(t, min(5, t.shape[0]))
            best = ", ".join(f"{int(i)} ({float(v):.3g})" for v, i in zip(top.values, top.indices))
            return vector_strip(t, title=[f"{self.layer}: {t.shape[0]} units, min {float(t.min()):.3g}, "
                                          f"max {float(t.max()):.3g}; largest: {best}", self._dead_line()])
        if t.ndim != 3:
            raise ValueError(f"cannot draw activations of shape {tuple(t.shape)}")
        channels = t.shape[0]
        shown = channels if max_channels is None else min(channels, max_channels)
        norm_text = "each map scaled to its own min..max" if norm == "channel" else "one shared scale"
        title = [f"{self.layer}: {shown} of {channels} channels, {t.shape[1]}x{t.shape[2]} each, {norm_text}",
                 self._dead_line()]
        return feature_grid(t[:shown], dead=[d for d in self.dead if d < shown], norm=norm, cmap=cmap,
                            columns=columns, title=title)

    def _dead_line(self) -> str:
        if not self.dead:
            return ""
        listed = ", ".join(map(str, self.dead[:20])) + (" ..." if len(self.dead) > 20 else "")
        return f"dead on this image (all zero): {len(self.dead)} -> {listed}"

    def summary(self) -> dict[str, Any]:
        """Plain data for JSON: shape, dead channels, and per-channel max and mean."""
        t = self.tensor.float()
        flat = t.reshape(t.shape[0], -1) if t.ndim == 3 else t.reshape(-1, 1)
        return {
            "layer": self.layer,
            "shape": list(t.shape),
            "dead": list(self.dead),
            "max": [round(float(v), 6) for v in flat.amax(1)],
            "mean": [round(float(v), 6) for v in flat.mean(1)],
            "recipe": self.recipe.to_dict(),
        }


def activations(model: ModelSpec | nn.Module | str, image: ImageLike, layer: str | nn.Module) -> ActivationGrid:
    """The output of `layer` for one image, with its dead channels.

    Args:
        model: a `ModelSpec`, an `nn.Module` or a model string (`convscope.models.load`).
        image: a path, PIL image or array (pixels; resized, cropped and normalized for the model), a (C, H, W)
            tensor of [0, 1] pixels (also resized and normalized), or a (1, C, H, W) tensor that is already the
            normalized model input (used as is). See `as_model_input`.
        layer: a `named_modules()` path (`"features.3"`, `"layer1.0.relu#1"`) or a module of the model.

    The model runs in eval mode under `torch.inference_mode`, stopping right after the layer; it is left as found.
    """
    spec = load(model)
    name, _ = resolve_layer(spec.module, layer)
    x, description = as_model_input(spec, image)
    with frozen(spec.module) as net, torch.inference_mode(), capture(net, name, stop=True) as cap:
        with spec.size_errors(x, "the input"):
            cap.run(x)
        output = cap[name]
    output = output[0].clone()  # a normal tensor, usable outside inference mode
    recipe = Recipe(kind="activations", model=spec.describe(),
                    params={"layer": name, "image": description, "input_shape": list(x.shape)})
    return ActivationGrid(tensor=output, layer=name, dead=tuple(dead_channels(output)), recipe=recipe)
