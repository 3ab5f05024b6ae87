"""The one exception family of convscope: every error a person can act on is a `ConvscopeError`.

The CLI prints these in one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvscopeError(Exception):
    """Base class: a problem with the user's input that the message explains."""


class LayerNotFoundError(ConvscopeError, KeyError):
    """A layer name that is not a `named_modules()` path of the model."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class AmbiguousLayerError(ConvscopeError):
    """A module that runs more than once per forward pass, addressed without `#call`."""


class UnitOutOfRangeError(ConvscopeError, IndexError):
    """A channel, row or column index outside the layer's output."""


class UnitSyntaxError(ConvscopeError, ValueError):
    """A unit string that does not read as `LAYER`, `LAYER:CH` or `LAYER:CH@ROW,COL`."""


class ModelLoadError(ConvscopeError):
    """A model string, file or factory that cannot be loaded."""


class WeightMismatchError(ModelLoadError):
    """A weight file that does not fit the architecture (missing/unexpected keys, shape mismatches)."""


class BadImageError(ConvscopeError, ValueError):
    """An image file that cannot be read, or whose mode cannot be converted meaningfully."""


class DatasetError(ConvscopeError):
    """A dataset that cannot be read as a whole (a single bad file is skipped, not raised)."""


class InputShapeError(ConvscopeError, ValueError):
    """An input tensor of the wrong shape or channel count for the model."""


class TargetError(ConvscopeError, ValueError):
    """An attribution or visualization target that does not exist for this model."""


class NonFiniteError(ConvscopeError, FloatingPointError):
    """NaN or infinity where a finite tensor was needed."""


class OptionError(ConvscopeError, ValueError):
    """An option outside its valid range (a negative eps, zero steps, an unknown method name, ...)."""


class TorchScriptError(ConvscopeError, TypeError):
    """A layer-level operation (hooks, module swaps) asked of a TorchScript model, which allows none."""


class CheckpointError(ConvscopeError):
    """A checkpoint file that cannot be resumed from: unreadable, of another format, or of another run."""


def closest(name: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """The up-to-`n` candidates most similar to `name` (difflib ratio), best first."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not found:  # fall back to a prefix/suffix match, useful for long dotted paths
        tail = name.split(".")[-1]
        found = [c for c in candidates if c.endswith(tail) or c.startswith(name)][:n]
    return found


def suggest(name: str, candidates: Iterable[str]) -> str:
    """A ' Did you mean ...?' sentence, or '' when nothing is close."""
    found = closest(name, candidates)
    return f" Did you mean {', '.join(repr(f) for f in found)}?" if found else ""
