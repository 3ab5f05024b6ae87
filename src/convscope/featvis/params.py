"""Parameterizations: what gradient ascent changes, and how it becomes an image.

A parameterization is an `nn.Module` whose `forward()` returns pixels (B, C, H, W) in [0, 1]; its constants are
buffers, so `.to(device)` moves them. The render loop normalizes those pixels with the model's statistics.

- `PixelParam`: the pixels themselves, kept in [0, 1] by clipping after each step (the classic setting of
  Simonyan et al., Yosinski et al. and DeepDream).
- `FourierParam`: a spectrum scaled by 1/frequency (so every frequency learns at the same speed) and, for 3-channel
  models, decorrelated colour with the ImageNet colour correlation matrix, squashed by a sigmoid (Olah et al. 2017,
  as Lucid/Lucent). 1- and N-channel models use the identity colour matrix. Any size, square or not.

Every parameterization also implements `set_pixels(pixels)` (start from an image, e.g. a photo or the previous
octave) and `resized(size)` (the same image at another size, for octaves). Randomness comes only from the
`torch.Generator`s passed in, one per batch item, so an item renders the same alone or in a batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputShapeError

__all__ = ["Parameterization", "PixelParam", "FourierParam", "COLOR_CORRELATION", "make_param", "noise"]

# Square root of the colour correlation of ImageNet pixels (Lucid's `color_correlation_svd_sqrt`), rows = RGB.
COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])


def noise(generators: Sequence[torch.Generator], shape: Sequence[int], sd: float) -> torch.Tensor:
    """(len(generators), *shape) normal noise with standard deviation `sd`, item i drawn from generator i (CPU)."""
    return torch.stack([torch.randn(tuple(shape), generator=g) * sd for g in generators])


class Parameterization(nn.Module):
    """Base class: `forward() -> (B, C, H, W)` pixels in [0, 1]."""

    pixel_space = False  # True when the parameters are the pixels (projections and pixel-space steps apply)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        raise NotImplementedError

    def set_pixels(self, pixels: torch.Tensor) -> None:
        raise NotImplementedError

    def project_(self) -> None:
        """Called after each step to keep the parameters valid (no-op unless overridden)."""

    def resized(self, size: tuple[int, int]) -> Parameterization:
        """A new parameterization of the same kind showing this image resized to `size` (bilinear)."""
        pixels = F.interpolate(self().detach(), size=tuple(size), mode="bilinear", align_corners=False)
        new = self._empty(pixels.shape)
        new.set_pixels(pixels.clamp(0, 1))
        return new

    def _empty(self, shape: torch.Size) -> Parameterization:
        raise NotImplementedError


class PixelParam(Parameterization):
    """Pixels (B, C, H, W) optimized directly and clipped to [0, 1] after every step."""

    pixel_space = True

    def __init__(self, pixels: torch.Tensor):
        super().__init__()
        if pixels.ndim != 4:
            raise InputShapeError(f"pixels must be (B, C, H, W), got {tuple(pixels.shape)}")
        self.pixels = nn.Parameter(pixels.detach().clone().clamp(0, 1))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.pixels.shape)  # type: ignore[return-value]

    def forward(self) -> torch.Tensor:
        return self.pixels

    def set_pixels(self, pixels: torch.Tensor) -> None:
        with torch.no_grad():
            self.pixels.copy_(pixels.expand_as(self.pixels).clamp(0, 1))

    def project_(self) -> None:
        with torch.no_grad():
            self.pixels.clamp_(0, 1)

    def _empty(self, shape: torch.Size) -> PixelParam:
        return PixelParam(self.pixels.new_zeros(shape))


def _mix(matrix: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """out[:, i] = sum_j matrix[i, j] * image[:, j], for (B, C, H, W) (a sum of scaled planes, cheaper on CPU than
    einsum's batched matmul for a handful of channels)."""
    channels = image.shape[1]
    if channels > 8:
        return torch.einsum("ij,bjhw->bihw", matrix, image)
    planes = image.unbind(1)
    return torch.stack([sum(matrix[i, j] * planes[j] for j in range(channels)) for i in range(channels)], 1)


def _frequencies(height: int, width: int) -> torch.Tensor:
    fy = torch.fft.fftfreq(height).view(-1, 1)
    fx = torch.fft.rfftfreq(width).view(1, -1)
    return torch.sqrt(fx * fx + fy * fy)  # (H, W // 2 + 1)


class FourierParam(Parameterization):
    """A 1/f-scaled spectrum per item and channel -> irfft2 -> colour decorrelation -> sigmoid.

    Args:
        spectrum: (B, C, H, W // 2 + 1, 2) real and imaginary parts (before the frequency scaling).
        size: (H, W) of the image.
        decorrelate: use the ImageNet colour correlation for 3 channels (identity otherwise).
        decay_power: the frequency scaling is 1 / max(f, 1 / max(H, W)) ** decay_power (1 as Lucid).
    """

    def __init__(self, spectrum: torch.Tensor, size: tuple[int, int], *, decorrelate: bool = True,
                 decay_power: float = 1.0):
        super().__init__()
        height, width = size
        channels = spectrum.shape[1]
        if spectrum.shape[2:] != (height, width // 2 + 1, 2):
            raise ValueError(f"spectrum {tuple(spectrum.shape)} does not fit an image of size {size}")
        self.size = (int(height), int(width))
        self.decorrelate = decorrelate
        self.decay_power = decay_power
        self.spectrum = nn.Parameter(spectrum.detach().clone())
        scale = 1.0 / _frequencies(height, width).clamp(min=1.0 / max(height, width)) ** decay_power
        self.register_buffer("scale", scale.to(spectrum.dtype)[..., None])
        if decorrelate and channels == 3:
            color = COLOR_CORRELATION / COLOR_CORRELATION.norm(dim=0).max()
        else:
            color = torch.eye(channels)
        self.register_buffer("color", color.to(spectrum.dtype))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.spectrum.shape[0], self.spectrum.shape[1], *self.size)

    def latent(self) -> torch.Tensor:
        """The image before the sigmoid, (B, C, H, W)."""
        spectrum = torch.view_as_complex((self.spectrum * self.scale).contiguous())
        image = torch.fft.irfft2(spectrum, s=self.size, norm="ortho") / 4.0
        if image.shape[1] == 1:
            return image * self.color
        return _mix(self.color, image)

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.latent())

    def set_pixels(self, pixels: torch.Tensor) -> None:
        with torch.no_grad():
            p = pixels.to(self.spectrum.dtype).expand(self.shape).clamp(1e-3, 1 - 1e-3)
            image = _mix(torch.linalg.inv(self.color), torch.logit(p)) * 4.0
            spectrum = torch.view_as_real(torch.fft.rfft2(image, norm="ortho")) / self.scale
            self.spectrum.copy_(spectrum)

    def _empty(self, shape: torch.Size) -> FourierParam:
        b, c, h, w = shape
        return FourierParam(self.spectrum.new_zeros(b, c, h, w // 2 + 1, 2), (h, w), decorrelate=self.decorrelate,
                            decay_power=self.decay_power).to(self.scale.device)


def make_param(kind: str, generators: Sequence[torch.Generator], channels: int, size: tuple[int, int], *,
               init: torch.Tensor | str = "noise", decorrelate: bool = True, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Parameterization:
    """A `"pixel"` or `"fourier"` parameterization of len(generators) items of (channels, *size).

    `init` is `"noise"` (item i from generator i: Fourier spectrum sd 0.01 as Lucid, pixels 0.5 + N(0, 0.05)),
    `"grey"` (0.5 everywhere) or pixels (B or 1, C, H, W) in [0, 1] at `size`.
    """
    batch = len(generators)
    height, width = size
    if kind == "fourier":
        if isinstance(init, str) and init == "noise":
            spectrum = noise(generators, (channels, height, width // 2 + 1, 2), 0.01)
        else:
            spectrum = torch.zeros(batch, channels, height, width // 2 + 1, 2)
        param: Parameterization = FourierParam(spectrum.to(dtype), (height, width), decorrelate=decorrelate)
    elif kind == "pixel":
        if isinstance(init, str) and init == "noise":
            pixels = 0.5 + noise(generators, (channels, height, width), 0.05)
        else:
            pixels = torch.full((batch, channels, height, width), 0.5)
        param = PixelParam(pixels.to(dtype))
    else:
        raise ValueError(f"unknown parameterization {kind!r}; use 'fourier', 'pixel' or an nn.Module")
    param = param.to(device)
    if isinstance(init, torch.Tensor):
        param.set_pixels(init.to(device, dtype))
    return param
