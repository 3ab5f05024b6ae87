"""Model strings -> ModelSpec. (Placeholder: the loaders are being written; plain modules work.)"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ModelLoadError
from .spec import ModelSpec, spec_for_module


def load(model, *, arch: str | None = None, seed: int = 0, device: str | torch.device | None = None) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, nn.Module):
        return spec_for_module(model)
    raise ModelLoadError(f"cannot load model {model!r} yet")
