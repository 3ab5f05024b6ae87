"""Freed memory kept for the next batch instead of handed back to the operating system.

PyTorch's CPU tensors come from the C library's `malloc`. glibc's malloc serves large blocks (above its mmap
threshold, at most 32 MiB) with fresh `mmap`s and unmaps them when freed, and returns free memory above its trim
threshold at the top of the heap, so a loop that allocates the same activations batch after batch has the kernel map
and zero them page by page, every batch. Its thresholds adapt to what it sees, but not far enough for a network's
activations, and never past 32 MiB. Measured on one core (AMD EPYC, torch 2.14): a float32 scan of every layer of
fashion-cnn over the 10,000 test images took 2.62-2.93 s with 450,000-470,000 minor page faults, and 1.74 s with
3,000 after `keep_freed_memory()`; MobileNetV2's plain float32 forward over 128 photos at a batch of 32 took 3.5-4.8 s
with 0.7-1.2 million faults, and 2.0 s with none; a bf16 render step of GoogLeNet's inception4a at a batch of 8,
80 ms with 3,500 faults, and 72 ms with none.

`keep_freed_memory()` tells glibc to serve every block from its heap (no `mmap` per block: `M_MMAP_MAX` 0) and to
keep up to 1 GiB of free heap memory for reuse (`M_TRIM_THRESHOLD`). It acts on the whole process for the rest of
its life, which is why the library never calls it on its own: the `convscope` command does (it owns its process),
and a program of yours may. The memory a job reaches at its peak then stays with the process until it exits, as
with PyTorch's CUDA caching allocator (measured: the same peak resident size, 1.28 against 1.32 GB, for the
MobileNetV2 scan above). Nothing changes where the C library is not glibc, and nothing where the user already set
`MALLOC_MMAP_MAX_`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `MALLOC_TOP_PAD_`, or
`CONVSCOPE_KEEP_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["keep_freed_memory", "TRIM_THRESHOLD"]

TRIM_THRESHOLD = 1 << 30
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters, from glibc's malloc.h
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module's text); True when the settings took effect,
    False where they do not apply (another C library, the user's own settings, `CONVSCOPE_KEEP_MEMORY=0`)."""
    if os.environ.get("CONVSCOPE_KEEP_MEMORY", "1") == "0" or any(name in os.environ for name in _USER_SETTINGS):
        return False
    if not sys.platform.startswith("linux"):  # glibc is Linux's; elsewhere CDLL(None) may not even load
        return False
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):
        return False
    # glibc's own symbol: musl and others have a mallopt of another meaning, or none
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
