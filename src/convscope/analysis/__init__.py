"""Analysis of what a network computes: activation grids, filter grids (more to come: top-k examples, statistics,
embeddings, probes). Every function returns a frozen result with a `recipe`, `to_image()` and `save()`."""

from .activations import ActivationGrid, activations, as_model_input, dead_channels
from .filters import FilterGrid, filter_smoothness, filters

__all__ = ["ActivationGrid", "FilterGrid", "activations", "as_model_input", "dead_channels", "filter_smoothness",
           "filters"]
