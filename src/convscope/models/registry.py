"""The registry of `convscope:NAME` models: built-in architectures (untrained, seeded) and shipped weights.

Each entry carries its preprocessing (channels, input size, mean, std) and class names; nothing is inferred from a
module's class name. Registering a name twice is refused.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ModelLoadError, suggest
from .cnn import CNN4, SmallCNN

__all__ = ["Entry", "register_model", "registered", "get_entry", "weights_path"]


@dataclass(frozen=True)
class Entry:
    """A `convscope:NAME` model.

    Either an architecture (`factory(channels=, num_classes=, input_size=, **options) -> nn.Module`, with the
    defaults below) or a shipped weights file (`weights`, a file name in `convscope/models/weights/` whose
    safetensors metadata names its architecture and preprocessing).
    """

    name: str
    description: str
    factory: Callable[..., nn.Module] | None = None
    channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    num_classes: int = 10
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    class_names: list[str] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None

    def factory_options(self) -> list[str]:
        """Keyword options the factory accepts (besides channels, num_classes, input_size)."""
        if self.factory is None:
            return []
        names = inspect.signature(self.factory).parameters
        return [n for n in names if n not in ("self", "channels", "num_classes", "input_size")]


_REGISTRY: dict[str, Entry] = {}


def register_model(entry: Entry) -> Entry:
    """Add a `convscope:NAME` entry. Raises `ValueError` if the name is taken (registries refuse duplicates)."""
    if entry.name in _REGISTRY:
        raise ValueError(f"a model named {entry.name!r} is already registered")
    if (entry.factory is None) == (entry.weights is None):
        raise ValueError(f"entry {entry.name!r} needs exactly one of factory or weights")
    _REGISTRY[entry.name] = entry
    return entry


def registered() -> list[Entry]:
    """All `convscope:` entries, in registration order."""
    return list(_REGISTRY.values())


def get_entry(name: str) -> Entry:
    if name not in _REGISTRY:
        raise ModelLoadError(f"unknown convscope model {name!r}; known: {', '.join(_REGISTRY)}."
                             f"{suggest(name, _REGISTRY)}")
    return _REGISTRY[name]


def weights_path(entry: Entry) -> Path:
    """The shipped weights file of `entry`, checked to exist."""
    assert entry.weights is not None
    path = Path(str(resources.files("convscope.models") / "weights" / entry.weights))
    if not path.is_file():
        raise ModelLoadError(f"convscope:{entry.name}: its weights file {str(path)!r} is missing from this install; "
                             "see convscope/models/weights/README.md for the command that makes it")
    return path


def _small_cnn_s2(channels: int = 1, num_classes: int = 10, input_size: int | Sequence[int] = 28,
                  hidden: int = 128, dropout: float = 0.3) -> nn.Module:
    return SmallCNN(channels, num_classes, input_size, stride=2, hidden=hidden, dropout=dropout)


_HALF = {1: (0.5,), 3: (0.5, 0.5, 0.5)}

register_model(Entry("small-cnn", "two 3x3 convs (32, 64) + ReLU + 2x2 max-pool, fc 128, dropout 0.3; untrained",
                     SmallCNN, channels=1, input_size=(28, 28), mean=_HALF[1], std=_HALF[1]))
register_model(Entry("small-cnn-s2", "small-cnn with stride-2 convolutions (the literature's variant); untrained",
                     _small_cnn_s2, channels=1, input_size=(28, 28), mean=_HALF[1], std=_HALF[1]))
register_model(Entry("cnn4", "four 3x3 convs (32, 64, 128, 128), each + max-pool + batch norm, fc 128; untrained",
                     CNN4, channels=3, input_size=(32, 32), mean=_HALF[3], std=_HALF[3]))
register_model(Entry("fashion-cnn", "small-cnn trained on Fashion-MNIST (60k images); 1x28x28 inputs",
                     weights="fashion-cnn.safetensors"))
