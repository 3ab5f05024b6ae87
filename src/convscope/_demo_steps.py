"""The demo's steps, in gallery order. Each returns [(file name in the output folder, caption)]."""

from __future__ import annotations

from .demo import DemoContext, step

MOBILENET = "torchvision:mobilenet_v2@IMAGENET1K_V1"
FASHION = "convscope:fashion-cnn"
