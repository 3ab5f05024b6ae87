"""`ModelSpec`: a module together with how its inputs are prepared and what its outputs mean."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import ConvscopeError, InputShapeError, NonFiniteError, TargetError, suggest
from ._probe import first_conv_channels, infer_input

__all__ = ["ModelSpec", "spec_for_module", "first_conv_channels"]


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
            `source["assumed"]`, when present, says in one line what was assumed rather than read from metadata.
        interpolation: how images are resized ("bilinear" or "bicubic", antialiased), as the weights' metadata says.
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
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

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
        from ..data.images import load_image

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
        return self.fit(pixels)

    def fit(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) pixels in [0, 1] -> (B, C, *input_size): resized and centre-cropped as the model's weights
        were evaluated (shorter side to `resize`, then the crop; or straight to `input_size`)."""
        from ..data.images import resize_crop

        return resize_crop(pixels, self.input_size, self.resize, self.interpolation)

    def preprocess(self, image: Image.Image | np.ndarray | str | Path) -> torch.Tensor:
        """An image -> normalized model input (1, C, H, W) on the model's device."""
        return self.normalize(self.to_pixels(image)).to(self.device, self.dtype)

    def run(self, inputs: torch.Tensor) -> torch.Tensor:
        """`module(inputs)` for inputs (B, C, H, W), with an input size the model cannot take reported as
        `InputShapeError` naming the size it expects (see `size_errors`)."""
        with self.size_errors(inputs):
            return self.module(inputs)

    @contextmanager
    def size_errors(self, inputs: torch.Tensor, what: str = "inputs") -> Iterator[None]:
        """Inside the block, a shape error from the model ("mat1 and mat2 shapes cannot be multiplied", a kernel
        larger than its input, ...) on `inputs` (B, C, H, W) whose (H, W) differs from `input_size` becomes one
        `InputShapeError` saying which size the model takes. Other errors pass unchanged."""
        try:
            yield
        except (RuntimeError, ValueError) as error:
            size = tuple(inputs.shape[-2:])
            cause = None if isinstance(error, ConvscopeError) else _shape_error_line(error)
            if cause is None:
                raise
            if self.source.get("input_found") is False:
                raise InputShapeError(f"{what} of {size[0]}x{size[1]} pixels do not fit model {self.name!r} ({cause}), "
                                      f"and its input size is unknown: {self.source.get('input')}") from error
            if size == tuple(self.input_size):
                raise
            h, w = self.input_size
            raise InputShapeError(
                f"{what} of {size[0]}x{size[1]} pixels do not fit model {self.name!r}, which takes "
                f"{self.channels}x{h}x{w} inputs ({cause}); resize them to {h}x{w}, as spec.preprocess(image) does"
            ) from error

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
            **({"resize": self.resize} if self.resize else {}),
            **({"interpolation": self.interpolation} if self.interpolation != "bilinear" else {}),
            **self.source,
        }


# What PyTorch says when a tensor's spatial size does not fit a layer (the first line that holds one is quoted).
_SHAPE_MESSAGES = ("mat1 and mat2 shapes cannot be multiplied", "size mismatch", "is invalid for input of size",
                   "Kernel size can't be greater than actual input size", "Output size is too small",
                   "must match the size of tensor", "Sizes of tensors must match", "Expected size",
                   "Padding size should be less than", "input image is smaller than kernel",
                   "Input size must be at least")


def _shape_error_line(error: BaseException) -> str | None:
    """The line of a PyTorch (or TorchScript) error message that reports a shape mismatch, else None."""
    for line in str(error).splitlines():
        if any(message in line for message in _SHAPE_MESSAGES):
            return line.strip().removeprefix("RuntimeError: ")
    return None


def spec_for_module(module: nn.Module, *, input_size: Sequence[int] | None = None, channels: int | None = None,
                    name: str | None = None) -> ModelSpec:
    """A `ModelSpec` for a plain `nn.Module` (or TorchScript module): no normalization, no class names.

    `channels` default to the first convolution's input channels and `input_size` (H, W) to the smallest square size
    the module runs at, or 224x224 for a network that runs at any size; both are found by probing zero batches
    (`convscope.models._probe`), and `source["input"]` says how. When no probe runs (a non-square network, say),
    224x224 stands in, `source["input_found"]` is False, and running the model on inputs that do not fit raises
    `InputShapeError` asking for the size.
    """
    label = name or type(module).__name__
    guess = infer_input(module, channels=channels, input_size=input_size)
    source: dict[str, Any] = {"model": label, "input": guess.note}
    if not guess.found:
        source["input_found"] = False
        source["assumed"] = f"{label}: {guess.note}"
    elif guess.assumed:
        source["assumed"] = f"{label}: {guess.note}; give channels= and input_size= to spec_for_module to choose"
    return ModelSpec(module=module, name=label, channels=guess.channels, input_size=guess.size, source=source)
