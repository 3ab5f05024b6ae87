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
    LayerNotFoundError,
    ModelLoadError,
    TargetError,
    UnitOutOfRangeError,
    WeightMismatchError,
)
from .layers import Unit, parse_unit  # noqa: E402
from .models import ModelSpec, load  # noqa: E402
from .results import Recipe  # noqa: E402

__all__ = [
    "__version__",
    "AmbiguousLayerError",
    "BadImageError",
    "ConvscopeError",
    "DatasetError",
    "LayerNotFoundError",
    "ModelLoadError",
    "ModelSpec",
    "Recipe",
    "TargetError",
    "Unit",
    "UnitOutOfRangeError",
    "WeightMismatchError",
    "load",
    "parse_unit",
]
