"""Freed memory kept for the next batch instead of handed back to the operating system.

PyTorch's CPU tensors come from the C library's `malloc`. glibc's malloc returns large freed blocks to the system
(blocks above its mmap threshold, and free memory above its trim threshold at the top of the heap), so a loop that
allocates the same activations batch after batch has the kernel map and zero them page by page, every batch. Its
thresholds adapt to what it sees, but not far enough for a network's activations: measured on one core (AMD EPYC,
torch 2.14), a float32 scan of every layer of fashion-cnn over the 10,000 test images took 2.93 s with 470,000
minor page faults, and 1.83 s with 1,800 after `keep_freed_memory()`; a bf16 render step of GoogLeNet's
inception4a at a batch of 8, 80 ms with 3,500 faults per step, and 72 ms with none.

`keep_freed_memory()` sets glibc's mmap threshold to 32 MiB (its largest: blocks below it come from the heap and are
reused) and its trim threshold to 256 MiB (free heap memory kept for reuse, up to that much). It acts on the whole
process for the rest of its life, which is why the library never calls it on its own: the `convscope` command
does (it owns its process), and a program of yours may. The memory a job reaches at its peak then stays with the
process until it exits, as with PyTorch's CUDA caching allocator. Nothing changes where the C library is not glibc,
and nothing where the user already set `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` or `MALLOC_TOP_PAD_`, or
`CONVSCOPE_KEEP_MEMORY=0`.
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "MMAP_THRESHOLD", "TRIM_THRESHOLD"]

MMAP_THRESHOLD = 32 << 20  # glibc's maximum (HEAP_MAX_SIZE / 2 on 64-bit systems): larger values are refused
TRIM_THRESHOLD = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (see the module's text); True when the settings took effect,
    False where they do not apply (another C library, the user's own settings, `CONVSCOPE_KEEP_MEMORY=0`)."""
    if os.environ.get("CONVSCOPE_KEEP_MEMORY", "1") == "0" or any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    # glibc's own symbol: musl and others have a mallopt of another meaning, or none
    if not (hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt")):
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
