"""Image sizes from the command line, and refusing sizes whose memory would not fit before any work starts.

`--size 100000` would ask for a 40 GB image (and far more for the activations): the estimate below is made from one
probe pass at the model's own input size, scaled by area, and compared with the memory free on the model's device.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

import torch

from ..errors import OptionError

# Copies of the image a render keeps: the parameterization, its gradient, two Adam moments, the image, its
# transformed and normalized copies; a training batch keeps the decoded, resized and normalized inputs.
PIXEL_COPIES = 8
# Autograd's saved activations, their gradients and the transformed copies (as `featvis.render` budgets a batch).
ACTIVATION_FACTOR = 3


def parse_size(text: str, option: str = "--size") -> int | tuple[int, int]:
    """`"128"` -> 128, `"96x160"` -> (96, 160); every side at least 1 pixel."""
    match = re.fullmatch(r"\s*(-?\d+)\s*(?:[xX]\s*(-?\d+)\s*)?", text)
    if not match:
        raise OptionError(f"{option} {text!r}: write a number (128) or HEIGHTxWIDTH (96x160)")
    sides = [int(g) for g in match.groups() if g is not None]
    if min(sides) < 1:
        raise OptionError(f"{option} {text!r}: an image needs at least 1 pixel per side; write e.g. 128 or 96x160")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def available_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on `device` (CPU: the kernel's MemAvailable), or None when unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _activation_bytes_per_pixel(spec) -> float:
    """Bytes autograd saves per input pixel in one pass through the whole model, from a probe at its input size
    (an over-estimate for an objective in an early layer, where the pass stops)."""
    from ..hooks import frozen, saved_tensor_bytes

    h, w = spec.input_size
    x = torch.full((1, spec.channels, h, w), 0.5, device=spec.device, dtype=spec.dtype, requires_grad=True)
    try:
        with frozen(spec.module) as net, saved_tensor_bytes() as counter, torch.enable_grad():
            net(spec.normalize(x))
    except Exception:  # noqa: BLE001 - only an estimate: a model the probe cannot run is judged by its pixels
        return 0.0
    return counter.bytes / (h * w)


def _text(n: float) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def _refuse(size: tuple[int, int], need: float, free: int, device: torch.device, option: str, what: str) -> None:
    factor = math.sqrt(free / need) * 0.9
    h, w = max(1, int(size[0] * factor)), max(1, int(size[1] * factor))
    raise OptionError(f"{option} {size[0]}x{size[1]}: {what} needs about {_text(need)}, more than the {_text(free)} "
                      f"free on {device}; at most about {h}x{w} fits")


def check_fits(spec, size: int | Sequence[int], *, scale: float = 1.0, batch: int = 1, network: bool = True,
               option: str = "--size", what: str = "one image") -> None:
    """Raise `OptionError` when `batch` images of `size` (times `scale` when above 1, as `--outscale` grows the
    last octave) for `spec` (pixels, and with `network` the activations and gradients of a pass through the model)
    would not fit in the memory free on the model's device. Sizes up to the model's input size are not checked:
    the model runs there."""
    size = tuple(round(side * max(1.0, scale)) for side in _pair(size))
    h0, w0 = spec.input_size
    if size[0] * size[1] <= h0 * w0:
        return
    free = available_bytes(spec.device)
    if free is None:
        return
    itemsize = torch.empty((), dtype=spec.dtype).element_size()
    need = batch * size[0] * size[1] * spec.channels * itemsize * PIXEL_COPIES
    if network:
        need += batch * size[0] * size[1] * _activation_bytes_per_pixel(spec) * ACTIVATION_FACTOR
    if need > free:
        _refuse(size, need, free, spec.device, option, what)


def check_pixels_fit(size: int | Sequence[int], *, batch: int, channels: int, option: str = "--size",
                     what: str = "one image", device: torch.device | None = None) -> None:
    """The pixels-only part of `check_fits`, for when no model is loaded yet (a lower bound: float32 pixels)."""
    size = _pair(size)
    device = device or torch.device("cpu")
    free = available_bytes(device)
    need = batch * size[0] * size[1] * channels * 4 * PIXEL_COPIES
    if free is not None and need > free:
        _refuse(size, need, free, device, option, what)
