"""Running the frozen network faster through public PyTorch APIs, behind one switch shared by feature
visualization, attribution and dataset analysis.

- `precision`: `"float32"`, `"bf16"` or `"auto"` (bf16 where it is measurably faster on the device). What ran is
  recorded in every recipe as the resolved value.
"""

from .precision import PRECISIONS, Precision, Resolved, bf16_speedup, network_precision, resolve_precision

__all__ = ["PRECISIONS", "Precision", "Resolved", "bf16_speedup", "network_precision", "resolve_precision"]
