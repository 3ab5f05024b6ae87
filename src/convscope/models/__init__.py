"""Loading any model: one model string, or an `nn.Module`, becomes a `ModelSpec`."""

from .spec import ModelSpec, spec_for_module
from .loading import load

__all__ = ["ModelSpec", "load", "spec_for_module"]
