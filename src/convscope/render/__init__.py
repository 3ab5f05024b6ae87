"""Pure drawing: tensors and arrays in, PIL images out. Nothing here touches a model or a hook."""

from .core import colorize, grid, label, normalize, to_pil
from .grids import feature_grid, filter_matrix, filter_tiles, vector_strip

__all__ = ["colorize", "feature_grid", "filter_matrix", "filter_tiles", "grid", "label", "normalize", "to_pil",
           "vector_strip"]
