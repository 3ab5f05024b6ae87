"""Analysis of what a network computes: activation grids, filter grids, dataset scans (top-k examples with patches
and projections, class purity, activation statistics and dead units), pooled codes over a dataset, t-SNE embeddings
and grids, layer-wise linear probes. Every function returns a frozen result with a `recipe`, `to_image()` and
`save()`."""

from ._collect import Collector, LayerBatch
from ._examples import UnitExamples
from ._scan import Scan, scan, stats, topk
from ._stats import LayerStats, Stats
from ._stats_state import HIST_EDGES
from ._topk import LayerTopK, TopK
from .activations import ActivationGrid, activations, as_model_input, dead_channels
from .codes import Codes, codes
from .filters import FilterGrid, filter_smoothness, filters
from .probe import Probes, probe, probe_codes
from .tsne import TSNE, tsne, tsne_from_codes

__all__ = ["ActivationGrid", "Codes", "Collector", "FilterGrid", "HIST_EDGES", "LayerBatch", "LayerStats",
           "LayerTopK", "Probes", "Scan", "Stats", "TSNE", "TopK", "UnitExamples", "activations", "as_model_input",
           "codes", "dead_channels", "filter_smoothness", "filters", "probe", "probe_codes", "scan", "stats", "topk",
           "tsne", "tsne_from_codes"]
