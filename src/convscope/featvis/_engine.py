"""Faster kernels for two kinds of frozen convolution in the render loop on the CPU.

A render needs only the input gradient of every convolution (the weights are frozen), and PyTorch's general
kernels are slow for two shapes that feature visualization meets all the time:

- `PointwiseConv`: a 1x1, stride-1 convolution. With a batch under 16 on one thread PyTorch sends it to its generic
  im2col kernel, about twice oneDNN's cost; GoogLeNet-style networks are mostly such convolutions. Its input
  gradient is itself a 1x1 convolution (the output gradient with the transposed weight), so both passes run as
  oneDNN convolutions.
- `ImageConv`: the strided convolution that reads the image (a few input channels, e.g. a 7x7 stride-2 stem).
  oneDNN's backward-data kernel for it costs 3-5x its forward. Split by output phase, the gradient of a stride-s
  convolution is one stride-1 convolution of the output gradient with the flipped kernel taps of each phase
  (s*s*C output channels) followed by `pixel_shuffle(s)`, which runs at forward speed.

`engine(model)` returns replacements for `hooks.swap_modules`; values and input gradients equal the original
convolution's up to float rounding. Nothing is replaced off the CPU, for dtypes other than float32, for weights that
require grad, or (for `PointwiseConv`) when PyTorch has no oneDNN.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["engine", "PointwiseConv", "ImageConv"]

_ONE = ([0, 0], [1, 1], [1, 1])  # padding, stride, dilation
IMAGE_CHANNELS = 4  # at most this many input channels: the image-facing convolution


class _Pointwise(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, transposed: torch.Tensor,
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(transposed)
        return torch.ops.aten.mkldnn_convolution(x, weight, bias, *_ONE, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (transposed,) = ctx.saved_tensors
        return torch.ops.aten.mkldnn_convolution(grad, transposed, None, *_ONE, 1), None, None, None


class PointwiseConv(nn.Module):
    """A frozen 1x1, stride-1, one-group `nn.Conv2d` run by oneDNN both ways: (B, C, H, W) -> (B, O, H, W)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        weight = conv.weight.detach()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("transposed", weight.transpose(0, 1).contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return F.conv2d(x, self.weight, self.bias)
        return _Pointwise.apply(x, self.weight, self.transposed, self.bias)


def phase_kernels(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """(O, C, kh, kw) weight of a stride-s convolution -> (C*s*s, O, K1, K2) kernels, K = ceil(k / s): channel
    `c*s*s + a*s + b` holds the taps `weight[:, c, s*r + a, s*t + b]`, flipped, that reach input rows and columns
    of phase (a, b); the order `pixel_shuffle(s)` expects."""
    out_channels, channels, kh, kw = weight.shape
    k1, k2 = math.ceil(kh / stride), math.ceil(kw / stride)
    padded = F.pad(weight, (0, k2 * stride - kw, 0, k1 * stride - kh))
    taps = padded.view(out_channels, channels, k1, stride, k2, stride).permute(1, 3, 5, 0, 2, 4)
    return taps.flip(-1, -2).reshape(channels * stride * stride, out_channels, k1, k2)


class _Image(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, phases: torch.Tensor,
                stride: int, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(phases)
        ctx.geometry = (stride, padding, tuple(x.shape[-2:]))
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        (phases,) = ctx.saved_tensors
        stride, (ph, pw), (height, width) = ctx.geometry
        k1, k2 = phases.shape[-2:]
        # gradient of the zero-padded input, phase by phase; rows past the last one any output reads get none
        full = F.pixel_shuffle(F.conv2d(grad, phases, padding=(k1 - 1, k2 - 1)), stride)
        short_h, short_w = ph + height - full.shape[-2], pw + width - full.shape[-1]
        if short_h > 0 or short_w > 0:
            full = F.pad(full, (0, max(0, short_w), 0, max(0, short_h)))
        return full[..., ph : ph + height, pw : pw + width], None, None, None, None, None


class ImageConv(nn.Module):
    """A frozen strided `nn.Conv2d` (equal strides, no dilation, one group, zero padding) whose input gradient is
    computed phase by phase (see the module docstring): (B, C, H, W) -> (B, O, Ho, Wo)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.stride, self.padding = conv.stride[0], tuple(conv.padding)
        weight = conv.weight.detach()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())
        phases = phase_kernels(weight, self.stride)
        self.register_buffer("phases", phases.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32:
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return _Image.apply(x, self.weight, self.bias, self.phases, self.stride, self.padding)


def _frozen_cpu_conv(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu" and conv.weight.dtype == torch.float32
            and not conv.weight.requires_grad)


def _replacement(conv: nn.Module) -> nn.Module | None:
    if not _frozen_cpu_conv(conv):
        return None
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0):
        return PointwiseConv(conv) if torch.backends.mkldnn.is_available() else None
    stride = conv.stride[0]
    if stride > 1 and conv.stride[1] == stride and conv.in_channels <= IMAGE_CHANNELS:
        return ImageConv(conv)
    return None


def engine(model: nn.Module) -> dict[str, nn.Module]:
    """Replacements `{path: PointwiseConv | ImageConv}` for the eligible frozen convolutions of `model` (already
    frozen; call after other replacements such as BatchNorm folding are in place, so the fused copies are the ones
    wrapped)."""
    found = {name: _replacement(module) for name, module in model.named_modules()}
    return {name: module for name, module in found.items() if module is not None}
