"""Pure drawing: tensors and arrays in, PIL images out. Nothing here touches a model or a hook."""

from .core import colorize, grid, label, normalize, to_pil

__all__ = ["colorize", "grid", "label", "normalize", "to_pil"]
