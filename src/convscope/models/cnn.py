"""The seed networks: the small MNIST-style CNN from the literature and its deeper 4-conv sibling.

Both are `nn.Sequential`s with readable child names (`conv1`, `relu1`, `pool1`, ..., `fc1`, `dropout`, `fc2`) and a
separate module for every stage, so every activation is addressable by its `named_modules()` path.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

__all__ = ["SmallCNN", "CNN4"]


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class SmallCNN(nn.Sequential):
    """Two 3x3 convolutions (32 and 64 channels), each with ReLU and 2x2 max-pooling, a 128-unit fully connected
    layer with dropout, and a `num_classes`-way output. Trained with Adam and cross-entropy on MNIST-style data.

    Args:
        channels: input channels C (1 for MNIST / Fashion-MNIST).
        num_classes: outputs K.
        input_size: (H, W) of the input; the flatten size follows from it.
        stride: stride of both convolutions (1 by default; the literature's variant uses 2).
        hidden: width of the fully connected layer.
        dropout: dropout probability after `fc1`.

    Input (B, C, H, W) -> logits (B, K).
    """

    def __init__(self, channels: int = 1, num_classes: int = 10, input_size: int | Sequence[int] = 28,
                 stride: int = 1, hidden: int = 128, dropout: float = 0.3) -> None:
        height, width = _pair(input_size)
        for _ in range(2):
            height, width = _conv_out(height, 3, stride, 0) // 2, _conv_out(width, 3, stride, 0) // 2
        if height < 1 or width < 1:
            raise ValueError(f"input size {_pair(input_size)} is too small for SmallCNN with stride {stride}")
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(channels, 32, 3, stride=stride)),
            ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(32, 64, 3, stride=stride)),
            ("relu2", nn.ReLU()),
            ("pool2", nn.MaxPool2d(2)),
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(64 * height * width, hidden)),
            ("relu3", nn.ReLU()),
            ("dropout", nn.Dropout(dropout)),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]))


class CNN4(nn.Sequential):
    """Four 3x3 convolutions (32, 64, 128, 128 channels, padding 1), each followed by ReLU, 2x2 max-pooling and
    batch normalization; then a 128-unit fully connected layer with dropout and a `num_classes`-way output.

    For small images of any channel count (3x32x32, 1x28x28, ...). The flatten size is computed from
    `input_size`, which must be at least 16 pixels on each side.

    Input (B, C, H, W) -> logits (B, K).
    """

    widths = (32, 64, 128, 128)

    def __init__(self, channels: int = 3, num_classes: int = 10, input_size: int | Sequence[int] = 32,
                 hidden: int = 128, dropout: float = 0.3) -> None:
        height, width = _pair(input_size)
        if height < 16 or width < 16:
            raise ValueError(f"CNN4 needs inputs of at least 16x16 pixels, got {height}x{width}")
        layers: list[tuple[str, nn.Module]] = []
        previous = channels
        for i, out in enumerate(self.widths, start=1):
            layers += [
                (f"conv{i}", nn.Conv2d(previous, out, 3, padding=1)),
                (f"relu{i}", nn.ReLU()),
                (f"pool{i}", nn.MaxPool2d(2)),
                (f"bn{i}", nn.BatchNorm2d(out)),
            ]
            previous = out
            height, width = height // 2, width // 2
        layers += [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(previous * height * width, hidden)),
            (f"relu{len(self.widths) + 1}", nn.ReLU()),
            ("dropout", nn.Dropout(dropout)),
            ("fc2", nn.Linear(hidden, num_classes)),
        ]
        super().__init__(OrderedDict(layers))
