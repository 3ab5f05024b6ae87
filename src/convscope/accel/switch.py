"""The one switch of the engine: `with convscope.accel.plain():` runs every model exactly as written.

Outside the block (the default), feature visualization and attribution may run the frozen working copy of a model
faster with the same function: eval-mode BatchNorm folded into the convolution before it (`accel.fold`), the branches
of a concatenating layer that an objective does not read skipped (`accel.prune`). Inside it they do none of that, and
`precision="auto"` means float32 (an explicit `precision="bf16"` is still honoured): for comparing with another tool
bit for bit, or for hooks of your own on a model's modules. `convscope.attribution.no_folding()` is the same switch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

__all__ = ["plain", "enabled"]

_ENABLED: ContextVar[bool] = ContextVar("convscope_accel", default=True)


def enabled() -> bool:
    """False inside `plain()`."""
    return _ENABLED.get()


@contextlib.contextmanager
def plain() -> Iterator[None]:
    """Inside this block every model runs as written: no folding, no pruning, float32 unless bf16 is asked for."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)
