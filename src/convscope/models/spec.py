"""`ModelSpec`: a module together with how its inputs are prepared and what its outputs mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InputShapeError, NonFiniteError, TargetError, suggest

__all__ = ["ModelSpec"]


@dataclass
class ModelSpec:
    """A model plus its preprocessing and class names, as given by its weights' metadata.

    Attributes:
        module: the `nn.Module` (left in whatever mode it came in; convscope freezes it per call).
        name: the model string it was loaded from (or the class name for a plain module).
        channels: number of input channels C (1 for grayscale, 3 for RGB, N otherwise).
        input_size: (H, W) the model expects.
        mean, std: per-channel normalization applied to [0, 1] pixels; `None` means no normalization.
        resize: shorter side to resize to before the centre crop to `input_size` (torchvision style); `None`
            resizes straight to `input_size`.
        class_names: output index -> name, or `None` when unknown.
        source: how it was made (model string, weights, seed, file hashes), recorded in every result's recipe.
    """

    module: nn.Module
    name: str
    channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for label, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{label} has {len(values)} values for a {self.channels}-channel model")

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        for b in self.module.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        for p in self.module.parameters():
            return p.dtype
        return torch.float32

    def batch(self, tensor: torch.Tensor, what: str = "inputs") -> torch.Tensor:
        """A tensor (C, H, W) or (B, C, H, W) for this model -> (B, C, H, W), detached, on the model's device and
        dtype (no copy if already there). Only the layout is checked, not the value range: callers know whether they
        hold pixels or normalized inputs. `what` names the tensor in errors.

        Raises `InputShapeError` for other dimensions or another channel count, `NonFiniteError` for NaN or infinity.
        """
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{what} must be a tensor (C, H, W) or (B, C, H, W), got {type(tensor).__name__}")
        x = tensor.unsqueeze(0) if tensor.ndim == 3 else tensor
        if x.ndim != 4:
            raise InputShapeError(f"{what} must have shape (C, H, W) or (B, C, H, W), got {tuple(tensor.shape)}")
        if x.shape[1] != self.channels:
            raise InputShapeError(f"{what} {tuple(tensor.shape)} has {x.shape[1]} channels; model {self.name!r} takes "
                                  f"{self.channels}")
        if not torch.isfinite(x).all():
            raise NonFiniteError(f"NaN or infinite values in {what} {tuple(tensor.shape)}")
        return x.detach().to(self.device, self.dtype)

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean or (0.0,) * self.channels, dtype=x.dtype, device=x.device)
        std = torch.tensor(self.std or (1.0,) * self.channels, dtype=x.dtype, device=x.device)
        return mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels (B, C, H, W) -> model input (B, C, H, W)."""
        mean, std = self._stats(pixels)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input (B, C, H, W) -> [0, 1]-scale pixels (B, C, H, W) (not clipped)."""
        mean, std = self._stats(x)
        return x * std + mean

    def to_pixels(self, image: Image.Image | np.ndarray | str | Path) -> torch.Tensor:
        """An image (PIL, path, or array H x W [x C] in [0, 255] uint8 or [0, 1] float) -> (1, C, H, W) pixels in
        [0, 1], resized and centre-cropped to `input_size`, converted to this model's channel count."""
        from ..data.images import load_image, resize_crop

        if isinstance(image, (str, Path)):
            image = load_image(image, channels=self.channels)
        elif isinstance(image, np.ndarray):
            array = image.astype(np.float32)
            if image.dtype == np.uint8:
                array = array / 255.0
            if array.ndim == 2:
                array = array[..., None]
            image = torch.from_numpy(array).permute(2, 0, 1)
        elif isinstance(image, Image.Image):
            from ..data.images import pil_to_tensor

            image = pil_to_tensor(image, channels=self.channels, name="image")
        pixels = image if image.ndim == 4 else image.unsqueeze(0)
        return resize_crop(pixels, self.input_size, self.resize)

    def preprocess(self, image: Image.Image | np.ndarray | str | Path) -> torch.Tensor:
        """An image -> normalized model input (1, C, H, W) on the model's device."""
        return self.normalize(self.to_pixels(image)).to(self.device, self.dtype)

    def class_index(self, target: int | str) -> int:
        """A class index or name (`"tabby"`, case-insensitive) -> index; unknown names raise with suggestions."""
        if isinstance(target, int) or (isinstance(target, str) and target.lstrip("-").isdigit()):
            return int(target)
        if not self.class_names:
            raise TargetError(f"class {target!r}: model {self.name!r} has no class names; give an index")
        lowered = [c.lower() for c in self.class_names]
        key = target.lower().replace("_", " ")
        if key in lowered:
            return lowered.index(key)
        matches = [i for i, c in enumerate(lowered) if key in c.split(", ") or c.startswith(key)]
        if len(matches) == 1:
            return matches[0]
        raise TargetError(f"class {target!r} is not a class of {self.name!r}.{suggest(key, lowered)}")

    def class_name(self, index: int) -> str:
        if self.class_names and 0 <= index < len(self.class_names):
            return self.class_names[index]
        return str(index)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input (batch, C, H, W) on the model's device, for probe passes."""
        return torch.zeros(batch, self.channels, *self.input_size, device=self.device, dtype=self.dtype)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "channels": self.channels,
            "input_size": list(self.input_size),
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "classes": len(self.class_names) if self.class_names else None,
            **self.source,
        }


def first_conv_channels(module: nn.Module) -> int | None:
    """Input channels of the first conv layer (from the structure, not the class name), or None."""
    for m in module.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    return None


def spec_for_module(module: nn.Module, *, input_size: Sequence[int] | None = None, channels: int | None = None) -> ModelSpec:
    """A `ModelSpec` for a plain `nn.Module`: no normalization, channels from its first conv, 224x224 unless given."""
    channels = channels or first_conv_channels(module) or 3
    size = tuple(input_size) if input_size else (224, 224)
    return ModelSpec(module=module, name=type(module).__name__, channels=channels, input_size=size,  # type: ignore[arg-type]
                     source={"model": type(module).__name__})
