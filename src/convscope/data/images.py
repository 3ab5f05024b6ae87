"""Reading image files into [0, 1] tensors, with clear errors for files that cannot be read.

Modes are converted when that is meaningful: palette (P), grayscale with alpha (LA), RGBA (composited on white),
CMYK, 16- and 32-bit integer (I;16, I) and float (F) images. A truncated, zero-byte or non-image file raises
`BadImageError` naming the file; dataset readers catch it, report the file and skip it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import BadImageError

__all__ = ["load_image", "pil_to_tensor", "resize_crop", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _to_float_array(image: Image.Image, name: str) -> np.ndarray:
    """PIL image -> float32 array H x W x C in [0, 1] (C is 1, 3 or 4), handling every mode we accept."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        array = np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
        return array[..., None]
    if mode == "I":
        array = np.asarray(image, dtype=np.int32).astype(np.float32)
        top = 65535.0 if array.max() > 255 else 255.0
        return np.clip(array / top, 0.0, 1.0)[..., None]
    if mode == "F":
        array = np.asarray(image, dtype=np.float32)
        if not np.isfinite(array).all():
            raise BadImageError(f"image {name!r} holds NaN or infinite pixel values")
        lo, hi = float(array.min()), float(array.max())
        return ((array - lo) / (hi - lo) if hi > lo else np.zeros_like(array))[..., None]
    if mode == "1":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        image = image.convert("RGB")
    elif mode == "LA":
        image = image.convert("RGBA")
    elif mode not in ("L", "RGB", "RGBA"):
        try:
            image = image.convert("RGB")
        except (ValueError, OSError) as error:
            raise BadImageError(f"image {name!r} has mode {mode!r}, which cannot be converted to RGB") from error
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[2] == 4:  # composite on white: transparent areas read as background, not black
        rgb, alpha = array[..., :3], array[..., 3:]
        array = rgb * alpha + (1.0 - alpha)
    return array


def pil_to_tensor(image: Image.Image, *, channels: int = 3, name: str = "image") -> torch.Tensor:
    """PIL image -> (C, H, W) float32 in [0, 1] with `channels` channels.

    Grayscale becomes colour by repetition; colour becomes grayscale by ITU-R 601 luma. Any other mismatch raises.
    """
    array = _to_float_array(image, name)
    have = array.shape[2]
    if have != channels:
        if have == 1:
            array = np.repeat(array, channels, axis=2)
        elif have == 3 and channels == 1:
            array = (array @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
        else:
            raise BadImageError(f"image {name!r} has {have} channels; the model needs {channels}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()


def load_image(path: str | Path, *, channels: int = 3) -> torch.Tensor:
    """Read an image file -> (C, H, W) float32 in [0, 1]. Raises `BadImageError` naming the file if unreadable."""
    path = Path(path)
    if not path.exists():
        raise BadImageError(f"image {str(path)!r} does not exist")
    if path.is_dir():
        raise BadImageError(f"image {str(path)!r} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise BadImageError(f"image {str(path)!r} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return pil_to_tensor(image, channels=channels, name=str(path))
    except UnidentifiedImageError:
        raise BadImageError(f"image {str(path)!r} is not an image file PIL can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        if isinstance(error, BadImageError):
            raise
        raise BadImageError(f"image {str(path)!r} is corrupt or truncated ({error})") from None


def resize_crop(pixels: torch.Tensor, size: tuple[int, int], resize: int | None = None) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size): resize the shorter side to `resize` then centre-crop (torchvision style), or,
    with `resize=None`, resize straight to `size`. Antialiased bilinear, as torchvision's transforms."""
    height, width = pixels.shape[-2:]
    if (height, width) == tuple(size):
        return pixels
    if resize is None:
        return F.interpolate(pixels, size=tuple(size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    scale = resize / min(height, width)
    new = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    if resize == min(height, width):
        new = (height, width)
    resized = F.interpolate(pixels, size=new, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    top = int(round((new[0] - size[0]) / 2.0))
    left = int(round((new[1] - size[1]) / 2.0))
    return resized[..., top : top + size[0], left : left + size[1]]
