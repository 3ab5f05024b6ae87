"""Analysis of what a network computes: activation grids, filter grids, and dataset scans (top-k examples with
patches and projections, class purity, activation statistics and dead units). Every function returns a frozen
result with a `recipe`, `to_image()` and `save()`."""

from ._collect import Collector, LayerBatch
from ._examples import UnitExamples
from ._scan import Scan, scan, stats, topk
from ._stats import LayerStats, Stats
from ._stats_state import HIST_EDGES
from ._topk import LayerTopK, TopK
from .activations import ActivationGrid, activations, as_model_input, dead_channels
from .filters import FilterGrid, filter_smoothness, filters

__all__ = ["ActivationGrid", "Collector", "FilterGrid", "HIST_EDGES", "LayerBatch", "LayerStats", "LayerTopK", "Scan",
           "Stats", "TopK", "UnitExamples", "activations", "as_model_input", "dead_channels", "filter_smoothness",
           "filters", "scan", "stats", "topk"]
