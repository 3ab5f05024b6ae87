"""One kernel the engine keeps: the input gradient of the image-facing strided convolution, phase by phase.

A render needs the gradient with respect to the image, so it runs the backward-data pass of the first convolution,
the one that reads the image (a few input channels, e.g. GoogLeNet's and ResNet's 7x7 stride-2 stem). PyTorch's
CPU kernels for that pass cost 2-3x the forward (and copy the gradient to another layout first). Split by output
phase, the gradient of a stride-s convolution is ONE stride-1 convolution of the output gradient with the flipped
kernel taps of each phase (s*s*C output channels) followed by `pixel_shuffle(s)`, which runs at forward speed:
about 10% of a GoogLeNet render step in bf16 on our CPU.

Public APIs only (`F.conv2d`, `F.pixel_shuffle`, `torch.autograd.Function`, `torch.amp.custom_fwd/custom_bwd` so the
backward runs in the forward's autocast state). `image_convs(net)` returns replacements for `hooks.swap_modules` on
the frozen working copy; anything it does not cover (other devices, dilation, groups, non-zero padding modes,
unequal strides, weights that require grad) keeps `nn.Conv2d`. Checked against `nn.Conv2d` in float64 and on
GoogLeNet (tests/test_accel_engine.py).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImageConv", "image_convs", "phase_kernels", "IMAGE_CHANNELS"]

IMAGE_CHANNELS = 4  # at most this many input channels: a convolution that reads the image


def phase_kernels(weight: torch.Tensor, stride: int) -> torch.Tensor:
    """(O, C, kh, kw) weight of a stride-s convolution -> (C*s*s, O, K1, K2) kernels, K = ceil(k / s): channel
    `c*s*s + a*s + b` holds the taps `weight[:, c, s*r + a, s*t + b]`, flipped, that reach input rows and columns
    of phase (a, b); the order `pixel_shuffle(s)` expects."""
    out_channels, channels, kh, kw = weight.shape
    k1, k2 = math.ceil(kh / stride), math.ceil(kw / stride)
    padded = F.pad(weight, (0, k2 * stride - kw, 0, k1 * stride - kh))
    taps = padded.view(out_channels, channels, k1, stride, k2, stride).permute(1, 3, 5, 0, 2, 4)
    return taps.flip(-1, -2).reshape(channels * stride * stride, out_channels, k1, k2)


class _PhaseSplit(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu")
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, phases: torch.Tensor,
                stride: int, padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(phases)
        ctx.geometry = (stride, padding, tuple(x.shape[-2:]), x.dtype)
        return F.conv2d(x, weight, bias, stride, padding)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor):
        (phases,) = ctx.saved_tensors
        stride, (ph, pw), (height, width), dtype = ctx.geometry
        k1, k2 = phases.shape[-2:]
        # gradient of the zero-padded input, phase by phase; rows past the last one any output reads get none
        full = F.pixel_shuffle(F.conv2d(grad, phases, padding=(k1 - 1, k2 - 1)), stride)
        short_h, short_w = ph + height - full.shape[-2], pw + width - full.shape[-1]
        if short_h > 0 or short_w > 0:
            full = F.pad(full, (0, max(0, short_w), 0, max(0, short_h)))
        return full[..., ph : ph + height, pw : pw + width].to(dtype), None, None, None, None, None


class ImageConv(nn.Module):
    """A frozen strided `nn.Conv2d` (equal strides, no dilation, one group, zero padding) whose input gradient is
    computed phase by phase: (B, C, H, W) -> (B, O, Ho, Wo), the same values and gradients up to float rounding."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.stride, self.padding = conv.stride[0], tuple(conv.padding)
        weight = conv.weight.detach()
        self.register_buffer("weight", weight.contiguous(memory_format=torch.channels_last))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach())
        self.register_buffer("phases", phase_kernels(weight, self.stride).contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or not (torch.is_grad_enabled() and x.requires_grad):
            return F.conv2d(x, self.weight, self.bias, self.stride, self.padding)
        return _PhaseSplit.apply(x, self.weight, self.bias, self.phases, self.stride, self.padding)


def _eligible(conv: nn.Module) -> bool:
    return (type(conv) is nn.Conv2d and conv.in_channels <= IMAGE_CHANNELS and conv.stride[0] > 1
            and conv.stride[0] == conv.stride[1] and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)
            and conv.weight.device.type == "cpu" and not conv.weight.requires_grad)


def image_convs(net: nn.Module) -> dict[str, nn.Module]:
    """`{path: ImageConv}` for the image-facing strided convolutions of `net` (a frozen working copy, with any
    folding already in place so the fused copies are the ones wrapped)."""
    return {name: ImageConv(m) for name, m in net.named_modules() if name and _eligible(m)}
