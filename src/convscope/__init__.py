"""convscope: see what a convolutional network has learned and why it decides what it decides.

The public face: everything a user imports is listed in `__all__`; families live in their own subpackages
(`convscope.models`, `convscope.layers`, `convscope.hooks`, `convscope.render`, ...).
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    AmbiguousLayerError,
    BadImageError,
    ConvscopeError,
    DatasetError,
    InputShapeError,
    LayerNotFoundError,
    ModelLoadError,
    NonFiniteError,
    OptionError,
    TargetError,
    UnitOutOfRangeError,
    UnitSyntaxError,
    WeightMismatchError,
)
from .layers import LayerInfo, Unit, list_layers, parse_unit  # noqa: E402
from .models import ModelSpec, evaluate, load, predict, train  # noqa: E402
from .receptive import ReceptiveField, receptive_fields  # noqa: E402
from .results import Recipe  # noqa: E402

from . import accel, analysis, attribution, data, featvis, hooks, render  # noqa: E402  (the families, as namespaces)

__all__ = [
    "__version__",
    "AmbiguousLayerError",
    "BadImageError",
    "ConvscopeError",
    "DatasetError",
    "InputShapeError",
    "LayerNotFoundError",
    "ModelLoadError",
    "LayerInfo",
    "ModelSpec",
    "NonFiniteError",
    "OptionError",
    "ReceptiveField",
    "Recipe",
    "TargetError",
    "Unit",
    "UnitOutOfRangeError",
    "UnitSyntaxError",
    "WeightMismatchError",
    "accel",
    "analysis",
    "attribution",
    "data",
    "evaluate",
    "featvis",
    "hooks",
    "list_layers",
    "load",
    "parse_unit",
    "predict",
    "receptive_fields",
    "render",
    "train",
]
