"""What input a plain `nn.Module` takes, found from the module itself: channels from its first convolution, the
size by trying zero batches (1, C, S, S) until one runs.

Probes run frozen (`hooks.frozen`: eval mode, so batch norm keeps its statistics and dropout draws nothing; no
gradients), smallest size first, so most cost little: a network that runs at any size usually runs at a few pixels
already, and a fixed-size one fails early at small sizes. (The meta device would cost no arithmetic, but its first
use imports some 900 modules: seconds.) Results are cached per architecture.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..hooks import frozen

__all__ = ["InputGuess", "infer_input", "first_conv_channels", "is_torchscript_module"]

DEFAULT_SIZE = 224  # what a network that runs at any size is given
# The sizes tried, smallest first (the sizes between two of them are tried once the larger runs): the common sizes
# of fixed-size networks are among them, so each is found in a few probes.
_LADDER = (*range(1, 9), 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96, 112, 128, 160, 192, 224, 227, 256, 299)


@dataclass(frozen=True)
class InputGuess:
    """What a module takes: `channels`, `size` (H, W), and `note`, one line saying how they were found. `assumed`:
    the size or channel count is a default the module merely accepts, not one it needs; `found` is False when no
    probe ran at all (then 224x224 and 3 channels are placeholders, and running the model will say so)."""

    channels: int
    size: tuple[int, int]
    note: str
    assumed: bool = False
    found: bool = True


def is_torchscript_module(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def first_conv_channels(module: nn.Module) -> int | None:
    """Input channels of the first convolution (from the structure, not the class name), or None. TorchScript
    modules hide their classes: there, the first 4-D weight's input channels (times its groups when known)."""
    if not is_torchscript_module(module):
        for m in module.modules():
            if isinstance(m, nn.modules.conv._ConvNd):
                return m.in_channels
        return None
    for m in module.modules():
        if getattr(m, "original_name", "") in ("Conv1d", "Conv2d", "Conv3d"):
            weight = getattr(m, "weight", None)
            if isinstance(weight, torch.Tensor) and weight.ndim >= 3:
                return int(weight.shape[1]) * int(getattr(m, "groups", 1))
    for name, parameter in module.named_parameters():
        if parameter.ndim == 4 and name.endswith("weight"):
            return int(parameter.shape[1])
    return None


def _runs(module: nn.Module, channels: int, size: tuple[int, int], dtype: torch.dtype, device: torch.device
          ) -> bool:
    """Whether a zero batch (1, channels, *size) goes through `module` (frozen: eval mode, no gradients)."""
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, *size, dtype=dtype, device=device))
        return True
    except Exception:  # the module's own code may raise anything; it means "not like this"
        return False


def _smallest(runs: Callable[[int], bool], sizes: Sequence[int]) -> int | None:
    """The smallest size in `sizes` that runs, refined down to the sizes between it and the rung below."""
    below = 0
    for size in sizes:
        if runs(size):
            return next((s for s in range(below + 1, size) if runs(s)), size)
        below = size
    return None


def _guess(channels: int, runs_at: Callable[[int, tuple[int, int]], bool], how: str) -> InputGuess | None:
    def runs(size: int) -> bool:
        return runs_at(channels, (size, size))

    size = _smallest(runs, _LADDER)
    if size is None:
        return None
    # A fixed-size network runs only up to its total stride above its size (a flattened map then changes shape);
    # one that also runs at twice the size, plus one, takes any size.
    other = 2 * size + 1
    if runs(other):
        chosen = max(size, DEFAULT_SIZE)
        return InputGuess(channels, (chosen, chosen), f"{how}; {chosen}x{chosen} assumed: it runs at any size from "
                          f"{size} px (tried {size} and {other})", assumed=True)
    return InputGuess(channels, (size, size), f"{how}; {size}x{size}: the smallest size it runs at")


# Guesses by architecture: the class (its forward), every submodule's type and settings, every weight's shape. A
# second instance of the same network (a notebook re-running a cell, a test building it again) is not probed again.
_CACHE: "OrderedDict[tuple, InputGuess]" = OrderedDict()
_CACHE_SIZE = 256


def _settings(module: nn.Module) -> str:
    try:
        return module.extra_repr()  # kernel, stride, padding, features...: what decides the sizes a layer takes
    except Exception:  # TorchScript modules and odd custom modules may not have one
        return ""


def _layout(module: nn.Module) -> tuple:
    code = getattr(module, "code", "") if is_torchscript_module(module) else ""  # TorchScript: its forward's source
    return (type(module), code, *((name, type(m).__name__, _settings(m)) for name, m in module.named_modules()),
            *((name, tuple(p.shape), p.dtype) for name, p in module.named_parameters()))


def infer_input(module: nn.Module, *, channels: int | None = None,
                input_size: Sequence[int] | None = None) -> InputGuess:
    """The channels and (H, W) input size `module` takes; given values are kept, missing ones found by probing.

    Channels come from the first convolution; without one, 3 then 1 are tried. The size is 224 for a network that
    runs at any size (`assumed=True`), else the smallest square size it runs at. When no probe runs, the guess has
    `found=False` and a note asking for them (inputs given explicitly may still fit: a non-square network).
    """
    conv = None if channels else first_conv_channels(module)
    how = ("channels given" if channels else f"{conv} channel{'s' * (conv != 1)} from the first convolution" if conv
           else "")
    if input_size is not None and (channels or conv):
        return InputGuess(int(channels or conv), (int(input_size[0]), int(input_size[-1])), f"{how}; input size given")
    key = (channels, tuple(input_size) if input_size is not None else None, _layout(module))
    cached = _CACHE.get(key)
    if cached is not None:
        _CACHE.move_to_end(key)
        return cached
    candidates = [channels] if channels else [conv] if conv else [3, 1]
    dtype = next((p.dtype for p in module.parameters()), torch.float32)
    device = next((t.device for t in (*module.parameters(), *module.buffers())), torch.device("cpu"))
    guess = None
    with frozen(module) as working:
        def runs_at(c: int, size: tuple[int, int]) -> bool:
            return _runs(working, c, size, dtype, device)

        for c in candidates:
            label = how or f"{c} channel{'s' * (c != 1)} assumed: no convolution to read them from, and {c} runs"
            if input_size is not None:
                size = (int(input_size[0]), int(input_size[-1]))
                guess = InputGuess(c, size, f"{label}; input size given", assumed=True) if runs_at(c, size) else None
            else:
                guess = _guess(c, runs_at, label)
                if guess is not None and not how:
                    guess = InputGuess(guess.channels, guess.size, guess.note, assumed=True)
            if guess is not None:
                break
    if guess is None:
        tried = f"{candidates[0]}-channel" if len(candidates) == 1 else "3- or 1-channel"
        sizes = (f"at {tuple(input_size)}" if input_size is not None
                 else f"at any common square size up to {_LADDER[-1]} px")
        size = (int(input_size[0]), int(input_size[-1])) if input_size is not None else (DEFAULT_SIZE,) * 2
        guess = InputGuess(candidates[0], size, f"input not found: {type(module).__name__} runs on no {tried} zero "
                           f"batch {sizes}; give it: convscope.models.spec_for_module(model, channels=C, "
                           "input_size=(H, W))", assumed=True, found=False)
    _CACHE[key] = guess
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return guess
