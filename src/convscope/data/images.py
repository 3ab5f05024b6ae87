"""Reading image files into [0, 1] tensors, with clear errors for files that cannot be read.

Modes are converted when that is meaningful: palette (P), grayscale with alpha (LA), RGBA (composited on white),
CMYK, 16- and 32-bit integer (I;16, I) and float (F) images. A photo's EXIF orientation is applied, so pixels are
the right way up as a viewer shows them. A truncated, zero-byte or non-image file raises `BadImageError` naming the
file; dataset readers catch it, report the file and skip it.

Images larger than `pixel_limit()` are refused before they are decoded: a small file can expand to gigabytes (a
decompression bomb). The limit is Pillow's (`PIL.Image.MAX_IMAGE_PIXELS`, about 89 million pixels) unless the
environment variable `CONVSCOPE_MAX_PIXELS` (a number, or `none`) or `load_image(..., max_pixels=N)` says otherwise.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import BadImageError, OptionError

__all__ = ["load_image", "pil_to_tensor", "resize_crop", "pixel_limit", "IMAGE_SUFFIXES", "MAX_PIXELS_VARIABLE"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
MAX_PIXELS_VARIABLE = "CONVSCOPE_MAX_PIXELS"
_PILLOW_LIMIT = threading.Lock()


def pixel_limit() -> int | None:
    """The largest image (width x height) `load_image` reads by default: `$CONVSCOPE_MAX_PIXELS` (a whole number;
    `none` for no limit), else Pillow's decompression-bomb limit `PIL.Image.MAX_IMAGE_PIXELS`."""
    text = os.environ.get(MAX_PIXELS_VARIABLE, "").strip().replace("_", "")
    if not text:
        return Image.MAX_IMAGE_PIXELS
    if text.lower() in ("none", "0", "unlimited"):
        return None
    try:
        value = int(float(text)) if "e" in text.lower() else int(text)
    except ValueError:
        value = -1
    if value <= 0:
        raise OptionError(f"{MAX_PIXELS_VARIABLE}={os.environ[MAX_PIXELS_VARIABLE]!r} is not a pixel count; give a "
                          "whole number such as 200000000, or 'none' for no limit")
    return value


@contextmanager
def _pillow_allows(limit: int | None) -> Iterator[None]:
    """Pillow refuses images above its own limit (a process-wide setting) while opening and decoding them; a higher
    limit of ours lifts it for this one read, under a lock, and puts it back at once."""
    current = Image.MAX_IMAGE_PIXELS
    if current is None or (limit is not None and limit <= current):
        yield
        return
    with _PILLOW_LIMIT:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = limit
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _too_large(name: str, size: tuple[int, int] | None, limit: int | None, pillow: str = "") -> BadImageError:
    counted = re.search(r"\((\d+) pixels\)", pillow)  # Pillow refused it while opening: its message has the count
    pixels = size[0] * size[1] if size else int(counted[1]) if counted else None
    shown = f" is {size[0]}x{size[1]} = {pixels:,} pixels," if size else f" has {pixels:,} pixels," if pixels else ""
    need = str(pixels) if pixels else "N"
    return BadImageError(
        f"image {name!r}{shown} more than the limit of {limit or 0:,} pixels that guards against decompression bombs "
        f"(small files that expand to huge images). For a real large photo, raise the limit: "
        f"{MAX_PIXELS_VARIABLE}={need} (or load_image(..., max_pixels={need})), or shrink the photo first")


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation tag says (phone photos are stored sideways); unreadable EXIF data
    leaves the pixels as stored."""
    try:
        ImageOps.exif_transpose(image, in_place=True)  # (not in place, an upright photo would be copied)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError):
        pass
    return image


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


def load_image(path: str | Path, *, channels: int = 3, max_pixels: int | None = None) -> torch.Tensor:
    """Read an image file -> (C, H, W) float32 in [0, 1], turned upright by its EXIF orientation.

    `max_pixels`: refuse images with more pixels (width x height) than this, before decoding them; 0 for no limit;
    `None` (default) for `pixel_limit()`: `$CONVSCOPE_MAX_PIXELS`, else Pillow's limit of about 89 million.
    Raises `BadImageError` naming the file if it is unreadable or too large.
    """
    if max_pixels is not None and (not isinstance(max_pixels, int) or max_pixels < 0):
        raise OptionError(f"max_pixels must be a whole number of pixels (0 for no limit) or None, got {max_pixels!r}")
    limit = pixel_limit() if max_pixels is None else (max_pixels or None)
    path = Path(path)
    if not path.exists():
        raise BadImageError(f"image {str(path)!r} does not exist")
    if path.is_dir():
        raise BadImageError(f"image {str(path)!r} is a directory, not an image file")
    if path.stat().st_size == 0:
        raise BadImageError(f"image {str(path)!r} is empty (0 bytes)")
    size = None
    try:
        with warnings.catch_warnings(), _pillow_allows(limit):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                size = image.size
                if limit is not None and size[0] * size[1] > limit:
                    raise _too_large(str(path), size, limit)
                image.load()
                return pil_to_tensor(_upright(image), channels=channels, name=str(path))
    except UnidentifiedImageError:
        raise BadImageError(f"image {str(path)!r} is not an image file PIL can read") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:  # Pillow's own check
        raise _too_large(str(path), size, limit, str(error)) from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, BadImageError):
            raise
        raise BadImageError(f"image {str(path)!r} is corrupt or truncated ({error})") from None


def resize_crop(pixels: torch.Tensor, size: tuple[int, int], resize: int | None = None,
                interpolation: str = "bilinear") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, *size): resize the shorter side to `resize` then centre-crop (torchvision style), or,
    with `resize=None`, resize straight to `size`. Antialiased `interpolation` ("bilinear" or "bicubic"), as
    torchvision's and timm's transforms."""
    height, width = pixels.shape[-2:]
    if (height, width) == tuple(size):
        return pixels
    mode = {"bilinear": "bilinear", "bicubic": "bicubic"}.get(str(interpolation).lower())
    if mode is None:
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {interpolation!r}")
    if resize is None:
        return F.interpolate(pixels, size=tuple(size), mode=mode, align_corners=False, antialias=True).clamp(0, 1)
    scale = resize / min(height, width)
    new = (max(size[0], round(height * scale)), max(size[1], round(width * scale)))
    if resize == min(height, width):
        new = (height, width)
    resized = F.interpolate(pixels, size=new, mode=mode, align_corners=False, antialias=True).clamp(0, 1)
    top = int(round((new[0] - size[0]) / 2.0))
    left = int(round((new[1] - size[1]) / 2.0))
    return resized[..., top : top + size[0], left : left + size[1]]
