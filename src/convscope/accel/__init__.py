"""Running the frozen network faster through public PyTorch APIs, behind one switch shared by feature
visualization, attribution and dataset analysis. Everything here acts on the frozen working copy that
`hooks.frozen` yields, never on the user's model.

- `precision`: `"float32"`, `"bf16"` or `"auto"` (bf16 where the device and a few timed passes of the network
  itself find it faster). What ran is recorded in every recipe as the resolved value.
- `fold`: eval-mode BatchNorm folded into the convolution before it (checked on the probe pass).
- `prune`: the branches of a concatenating layer (Inception) that an objective does not read, skipped.
- `kernels`: the image-facing strided convolution's input gradient, phase by phase (renders only).
- `probe`: the one probe pass all of them share; `accelerated(...)`: probe, fold and prune for a render.
- `layout`: max-pool modules meet NCHW maps in channels-last (`exact_pools(net)`: the same bits, up to 10x faster
  on the CPU); non-overlapping max-pools of a private copy as maxima of strided views (`strided_pools(net)`).
- `memory`: `keep_freed_memory()`, glibc's malloc told to keep freed memory (the `convscope` command calls it).
- `plain()`: the switch; inside it models run as written (no folding, no pruning, float32 for "auto").
"""

from .engine import Applied, accelerated
from .fold import folded, fusions
from .kernels import ImageConv, image_convs
from .layout import StridedMaxPool2d, exact_pools, strided_pools
from .memory import keep_freed_memory
from .precision import (
    PRECISIONS,
    Precision,
    Resolved,
    bf16_speedup,
    check_precision,
    choose_precision,
    network_precision,
    resolve_precision,
)
from .probe import Probe, probe
from .prune import pruned
from .switch import enabled, plain

__all__ = ["PRECISIONS", "Precision", "Resolved", "bf16_speedup", "network_precision", "resolve_precision",
           "check_precision", "choose_precision",
           "folded", "fusions", "pruned", "Probe", "probe", "plain", "enabled", "Applied", "accelerated",
           "ImageConv", "image_convs", "exact_pools", "strided_pools", "StridedMaxPool2d",
           "keep_freed_memory"]
